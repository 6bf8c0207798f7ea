"""The image file names the engine reads and writes, by extension (ITK picks the format by it)."""
from __future__ import annotations

from pathlib import Path

READ_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def matching_suffix(path: Path, allowed: tuple[str, ...]) -> str | None:
    """The entry of ``allowed`` that ``path``'s name ends with (any case), else None."""
    name = path.name.lower()
    for s in allowed:
        if name.endswith(s):
            return s
    return None
