"""Finding the cases of a batch: which files/folders are CT volumes, and each case's
stable, file-system-safe name (also the name of its output folder)."""
from __future__ import annotations

import hashlib
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

from . import dicomweb
from .locking import LOCK_NAME
from .results import DONE_NAME, RESULT_NAME

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


# A folder holding one of these is a case output folder of some run: never an input.
OUTPUT_FOLDER_MARKERS = (RESULT_NAME, DONE_NAME, LOCK_NAME)
# Files this tool writes that are never CTs, wherever they lie.
OUTPUT_FILE_SUFFIXES = (".seg.nrrd",)


@dataclass
class Case:
    name: str
    path: Path
    kind: str = "file"  # file | dicom | dicomweb
    error: str = ""  # set when the input could not even be resolved: the case fails with it
    url: str = ""  # a DICOMweb study/series URL (kind "dicomweb"); ``path`` is then unused

    @property
    def input(self) -> str:
        """The input as the user gave it (report, records): the URL, or the path."""
        return self.url or str(self.path)


def case_stem(path: Path) -> str:
    """File name without its volume extension (handles the .nii.gz double extension)."""
    name = path.name
    low = name.lower()
    for suf in VOLUME_SUFFIXES:
        if low.endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return path.stem or name


def _is_volume_file(p: Path) -> bool:
    low = p.name.lower()
    return (p.is_file() and low.endswith(VOLUME_SUFFIXES) and not low.endswith(OUTPUT_FILE_SUFFIXES)
            and not p.name.startswith("."))


def is_output_folder(d: Path) -> bool:
    """A case folder written by liverseg (its results are never taken as new inputs)."""
    return any((d / m).exists() for m in OUTPUT_FOLDER_MARKERS)


def _resolve(p: Path) -> Path:
    """Absolute path with links resolved; a link loop or an unreadable link resolves to
    its absolute path (reading it then fails for this case alone, with a message)."""
    try:
        return p.resolve()
    except (OSError, RuntimeError):
        return p.absolute()


def _looks_dicom(p: Path) -> bool:
    if not p.is_file() or p.name.startswith("."):
        return False
    if p.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    try:
        with open(p, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _safe_name(name: str) -> str:
    """Keep non-ASCII letters and spaces; drop path separators and control characters."""
    name = unicodedata.normalize("NFC", name)
    out = "".join("_" if (c in "/\\:*?\"<>|" or ord(c) < 32) else c for c in name).strip()
    out = out.lstrip(".")
    return out or "case"


def _add_url(found: list[Case], url: str) -> None:
    """A DICOMweb study/series URL is one case, named by its UID; a malformed one fails alone."""
    try:
        ref = dicomweb.parse_url(url)
    except Exception as err:  # noqa: BLE001 - InputError with the reason
        url = dicomweb.redact(url)  # a refused user:password never reaches the report
        found.append(Case("dicomweb_" + hashlib.sha1(url.encode()).hexdigest()[:8], Path("."), "dicomweb", str(err),
                          url=url))
        return
    if any(c.url and c.url.rstrip("/") == ref.url for c in found):
        return
    found.append(Case(dicomweb.case_name(ref), Path("."), "dicomweb", url=ref.url))


def discover_cases(inputs: Iterable[Union[str, os.PathLike]], exclude: Optional[Path] = None) -> list[Case]:
    """Expand files and folders into cases, sorted by name with stable unique names.

    - a volume file is a case (any explicitly named file is a case, whatever its
      extension: reading it will say what is wrong);
    - a folder is walked recursively (hidden folders and ``exclude``, the output
      folder, are skipped): volume files inside are cases; a folder holding DICOM
      files and no volume files is one DICOM-series case, subfolders included (the
      series reader searches them);
    - liverseg's own outputs (case folders holding ``.result.json``/``.done.json``/
      ``.lock``, and ``.seg.nrrd`` files) are never cases, so OUTDIR may equal an input folder;
    - a path that does not exist or cannot be resolved (a link loop) becomes a case
      that fails alone with a clear message.

    Names come from the file name (folder name for DICOM). Names that collide
    (e.g. ``a/ct.nii.gz`` and ``b/ct.nrrd``) all get ``_<8 hex of the absolute path's
    SHA1>`` appended, which depends only on the path, so it is stable between runs.
    """
    found: list[Case] = []
    seen: set[Path] = set()
    excl = _resolve(exclude) if exclude is not None else None

    def add(path: Path, kind: str, error: str = "") -> None:
        rp = _resolve(path)
        if rp in seen:
            return
        seen.add(rp)
        name = rp.name if kind == "dicom" else case_stem(path)
        found.append(Case(_safe_name(name), path, kind, error))

    for raw in inputs:
        if dicomweb.is_dicomweb_url(str(raw)):
            _add_url(found, str(raw))
            continue
        p = Path(raw).expanduser()
        try:
            is_dir = p.is_dir()
        except OSError as err:  # e.g. a name too long
            add(p, "file", f"'{p}' cannot be opened ({err.strerror or err}). Check the path.")
            continue
        if not is_dir:
            add(p, "file")
            continue
        if is_output_folder(p):
            continue
        for dirpath, dirnames, filenames in os.walk(p):
            d = Path(dirpath)
            dirnames[:] = sorted(
                n for n in dirnames
                if not n.startswith(".") and (excl is None or _resolve(d / n) != excl)
                and not is_output_folder(d / n)
            )
            files = [d / n for n in sorted(filenames)]
            vols = [f for f in files if _is_volume_file(f)]
            if vols:
                for f in vols:
                    add(f, "file")
            elif any(_looks_dicom(f) for f in files):
                add(d, "dicom")
                dirnames[:] = []  # the series reader searches the subfolders too: one case, not two

    counts: dict[str, int] = {}
    for c in found:
        counts[c.name.casefold()] = counts.get(c.name.casefold(), 0) + 1
    for c in found:
        if counts[c.name.casefold()] > 1:
            h = hashlib.sha1(str(_resolve(c.path)).encode("utf-8", "surrogateescape")).hexdigest()[:8]
            c.name = f"{c.name}_{h}"
    found.sort(key=lambda c: (c.name.casefold(), c.name))
    return found
