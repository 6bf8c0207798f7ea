"""Finding the cases of a batch: which files/folders are CT volumes, and each case's
stable, file-system-safe name (also the name of its output folder)."""
from __future__ import annotations

import hashlib
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Case:
    name: str
    path: Path
    kind: str = "file"  # file | dicom


def case_stem(path: Path) -> str:
    """File name without its volume extension (handles the .nii.gz double extension)."""
    name = path.name
    low = name.lower()
    for suf in VOLUME_SUFFIXES:
        if low.endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return path.stem or name


def _is_volume_file(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES) and not p.name.startswith(".")


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


def discover_cases(inputs: Iterable[Union[str, os.PathLike]], exclude: Optional[Path] = None) -> list[Case]:
    """Expand files and folders into cases, sorted by name with stable unique names.

    - a volume file is a case (any explicitly named file is a case, whatever its
      extension: reading it will say what is wrong);
    - a folder is walked recursively (hidden folders and ``exclude``, the output
      folder, are skipped): volume files inside are cases; a folder holding DICOM
      files and no volume files is one DICOM-series case;
    - a path that does not exist becomes a case that fails with a clear message.

    Names come from the file name (folder name for DICOM). Names that collide
    (e.g. ``a/ct.nii.gz`` and ``b/ct.nrrd``) all get ``_<8 hex of the absolute path's
    SHA1>`` appended, which depends only on the path, so it is stable between runs.
    """
    found: list[Case] = []
    seen: set[Path] = set()
    excl = exclude.resolve() if exclude is not None else None

    def add(path: Path, kind: str) -> None:
        rp = path.resolve()
        if rp in seen:
            return
        seen.add(rp)
        name = path.resolve().name if kind == "dicom" else case_stem(path)
        found.append(Case(_safe_name(name), path, kind))

    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                d = Path(dirpath)
                dirnames[:] = sorted(
                    n for n in dirnames
                    if not n.startswith(".") and (excl is None or (d / n).resolve() != excl)
                )
                files = [d / n for n in sorted(filenames)]
                vols = [f for f in files if _is_volume_file(f)]
                if vols:
                    for f in vols:
                        add(f, "file")
                elif any(_looks_dicom(f) for f in files):
                    add(d, "dicom")
        else:
            add(p, "file")

    counts: dict[str, int] = {}
    for c in found:
        counts[c.name.casefold()] = counts.get(c.name.casefold(), 0) + 1
    for c in found:
        if counts[c.name.casefold()] > 1:
            h = hashlib.sha1(str(c.path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:8]
            c.name = f"{c.name}_{h}"
    found.sort(key=lambda c: (c.name.casefold(), c.name))
    return found
