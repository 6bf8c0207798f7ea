"""Confine every file the web app reads or writes to one configured data folder.

The browser only ever sends *relative* names; anything that would resolve
outside the data folder (``..``, absolute paths, symlinks pointing out, NUL
bytes, Windows drive letters) is refused with ``PathNotAllowedError``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..engine.errors import InputError, OutputError

CT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# What "Save" may produce; ``.seg.nrrd`` first so it wins over ``.nrrd``.
OUTPUT_SUFFIXES = (".seg.nrrd", ".nii.gz")
_SAFE_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,119}$")
# Labelmaps, not CTs: the CLI's "<case>_label.nii.gz" / ".nrrd" and the page's default "<ct>_liverseg".
_RESULT_STEM_ENDINGS = ("_label", "_liverseg")


class PathNotAllowedError(InputError):
    """A browser-supplied path points outside the data folder or is malformed."""


class OutputExistsError(OutputError):
    """Saving would replace an existing file."""


def _has_suffix(name: str, suffixes: tuple[str, ...]) -> bool:
    low = name.lower()
    return any(low.endswith(s) for s in suffixes)


def _stem(name: str, suffixes: tuple[str, ...]) -> str:
    low = name.lower()
    for s in suffixes:
        if low.endswith(s):
            return name[: -len(s)]
    return name


def is_saved_result(name: str, siblings: set[str]) -> bool:
    """True for a file this app (or the ``liverseg`` CLI) wrote as a result, which is no CT to open.

    ``siblings``: lower-case names in the same folder. Save writes ``NAME.seg.nrrd``
    beside ``NAME.nii.gz``, so a volume with a same-stem ``.seg.nrrd`` is a labelmap.
    """
    low = name.lower()
    if low.endswith(".seg.nrrd"):
        return True
    stem = _stem(low, CT_SUFFIXES)
    return stem.endswith(_RESULT_STEM_ENDINGS) or f"{stem}.seg.nrrd" in siblings


class DataFolder:
    """A folder the app may read CTs from and write results into, and nothing else."""

    def __init__(self, root: str | os.PathLike) -> None:
        r = Path(root).expanduser()
        if not r.is_dir():
            raise InputError(f"Data folder '{r}' does not exist. Create it or pass another --data-dir.")
        self.root = r.resolve()

    def resolve(self, relative: str) -> Path:
        """Browser-supplied relative path -> absolute path inside the root (not checked for existence)."""
        if not isinstance(relative, str) or not relative.strip():
            raise PathNotAllowedError("No file name given. Pick a file from the data folder list.")
        if "\x00" in relative or re.match(r"^[A-Za-z]:", relative) or relative.startswith(("/", "\\", "~")):
            raise PathNotAllowedError(
                f"'{relative}' is not a name inside the data folder. Use a name from the list, without a leading '/' or '~'.")
        parts = re.split(r"[\\/]+", relative)
        if any(p in ("..",) for p in parts):
            raise PathNotAllowedError(f"'{relative}' leaves the data folder ('..' is not allowed).")
        candidate = (self.root / Path(*[p for p in parts if p not in ("", ".")])).resolve()
        # resolve() follows symlinks, so a link that points out of the folder is caught here too.
        if candidate != self.root and self.root not in candidate.parents:
            raise PathNotAllowedError(f"'{relative}' points outside the data folder; it cannot be opened or written.")
        return candidate

    def input_path(self, relative: str) -> Path:
        """A readable CT file inside the root."""
        p = self.resolve(relative)
        if not _has_suffix(p.name, CT_SUFFIXES):
            raise PathNotAllowedError(
                f"'{relative}' is not a supported CT file. Use one of: {', '.join(CT_SUFFIXES)}.")
        if not p.is_file():
            raise InputError(f"'{relative}' was not found in the data folder. Refresh the list and pick again.")
        return p

    def output_paths(self, stem: str) -> dict[str, Path]:
        """``{'seg_nrrd': ..., 'nifti': ...}`` for a bare output name; refuses names that exist already."""
        stem = (stem or "").strip()
        for s in OUTPUT_SUFFIXES + (".nrrd", ".nii"):
            if stem.lower().endswith(s):
                stem = stem[: -len(s)]
                break
        if not _SAFE_STEM.match(stem) or stem in (".", ".."):
            raise PathNotAllowedError(
                f"'{stem}' is not a valid output name. Use letters, digits, '.', '_', '-' or spaces, no folders.")
        out = {"seg_nrrd": self.resolve(stem + ".seg.nrrd"), "nifti": self.resolve(stem + ".nii.gz")}
        existing = [p.name for p in out.values() if p.exists() or p.is_symlink()]
        if existing:
            raise OutputExistsError(
                f"{', '.join(existing)} already exist(s) in the data folder; choose another output name.")
        return out

    def list_cts(self, limit: int = 500) -> list[str]:
        """Relative names of the CT files under the root.

        Skipped: symlinks leading out, hidden files, and saved results (``is_saved_result``).
        """
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            siblings = {f.lower() for f in filenames}
            for f in sorted(filenames):
                if f.startswith(".") or not _has_suffix(f, CT_SUFFIXES) or is_saved_result(f, siblings):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, f), self.root)
                try:
                    self.resolve(rel)
                except PathNotAllowedError:
                    continue
                found.append(rel.replace(os.sep, "/"))
                if len(found) >= limit:
                    return found
        return found
