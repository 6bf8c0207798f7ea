"""The header of a plain NIfTI-1 file, read without nibabel.

Importing nibabel costs 0.25-0.35 s (it imports pydicom and its CIFTI-2 reader), more than
inflating a whole 512x512x78 CT; it was the largest part of ``liverseg``'s ``read`` stage
(issue 15). ``read_plain_header`` parses the 348-byte header with numpy and returns a
``PlainHeader`` only for files whose header nibabel's checked load would accept as it is:
single-file NIfTI-1 (magic ``n+1``), little-endian, 3 dimensions, a common data type with
its bit count, no header extensions, and an sform (code > 0, finite) that is the image's
affine. Anything else returns None and ``io`` asks nibabel, as before, so every message
about a broken header is nibabel's or io's own, unchanged.

``PlainHeader`` answers the few questions ``io`` and ``nifti_gz`` ask of nibabel's raw
header (``from_fileobj(check=False)``), with the same values (``Testing/test_nifti_header.py``).
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, Optional

import numpy as np

SIZEOF_HDR = 348
_READ = SIZEOF_HDR + 4  # the header and the 4 extension-flag bytes

# The fields io and nifti_gz use, at their NIfTI-1 offsets (little-endian).
_DTYPE = np.dtype({
    "names": ["sizeof_hdr", "dim", "datatype", "bitpix", "pixdim", "vox_offset", "scl_slope", "scl_inter",
              "qform_code", "sform_code", "srow_x", "srow_y", "srow_z", "magic", "extension"],
    "formats": ["<i4", ("<i2", 8), "<i2", "<i2", ("<f4", 8), "<f4", "<f4", "<f4", "<i2", "<i2", ("<f4", 4),
                ("<f4", 4), ("<f4", 4), "S4", ("u1", 4)],
    "offsets": [0, 40, 70, 72, 76, 108, 112, 116, 252, 254, 280, 296, 312, 344, 348],
    "itemsize": _READ,
})

# NIfTI-1 datatype codes of the scalar types nibabel and ITK both read, with their numpy type.
_TYPES = {2: "u1", 4: "<i2", 8: "<i4", 16: "<f4", 64: "<f8", 256: "i1", 512: "<u2", 768: "<u4",
          1024: "<i8", 1280: "<u8"}


class PlainHeader:
    """A plain NIfTI-1 header: the subset of nibabel's raw ``Nifti1Header`` that io uses."""

    sizeof_hdr = SIZEOF_HDR

    def __init__(self, fields: np.ndarray) -> None:
        self._f = fields

    def __getitem__(self, key: str) -> Any:
        return self._f[key]  # a 0-d (or 1-d) array, as nibabel's own structured header gives

    def get_data_dtype(self) -> np.dtype:
        return np.dtype(_TYPES[int(self._f["datatype"])])

    def get_data_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self._f["dim"][1:4])

    def get_data_offset(self) -> int:
        return int(self._f["vox_offset"])

    def get_sform(self) -> np.ndarray:
        out = np.eye(4)
        out[:3] = np.stack([self._f["srow_x"], self._f["srow_y"], self._f["srow_z"]])
        return out


def _head(p: Path) -> bytes:
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    with opener(p, "rb") as fh:
        return fh.read(_READ)


def read_plain_header(p: Path) -> Optional[PlainHeader]:
    """``p``'s header when it is a plain NIfTI-1 one (see the module docstring), else None.

    Never raises for a damaged file: None hands it to nibabel, whose errors io reports."""
    try:
        raw = _head(p)
    except (OSError, EOFError, ValueError):  # gzip/zlib errors: nibabel's path names them
        return None
    if len(raw) < _READ:
        return None
    f = np.frombuffer(raw, dtype=_DTYPE, count=1).reshape(())  # 0-d, like nibabel's
    dim, code = f["dim"], int(f["datatype"])
    offset = float(f["vox_offset"])
    srows = np.stack([f["srow_x"], f["srow_y"], f["srow_z"]])
    plain = (int(f["sizeof_hdr"]) == SIZEOF_HDR and raw[344:348] == b"n+1\x00"
             and int(dim[0]) == 3 and bool(np.all(dim[1:4] >= 1))
             and code in _TYPES and int(f["bitpix"]) == 8 * np.dtype(_TYPES[code]).itemsize
             and not any(f["extension"]) and offset >= _READ and offset == int(offset)
             and int(f["sform_code"]) > 0 and bool(np.isfinite(srows).all()))
    return PlainHeader(f.copy()) if plain else None
