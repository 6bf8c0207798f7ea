"""Fast path for the most common input: a plain 3D scalar .nii.gz.

ITK inflates a .nii.gz with zlib on one core, and ``io.read_volume`` must also
check the whole stream (ITK does not notice every truncation). Here the file
is inflated once, in Python, with ISA-L (``isal``, 2-3x faster than zlib) when
installed, else zlib; the gzip trailer (CRC-32 and length) is checked on the way.
Geometry always comes from ITK's own header reader, so origin, spacing and
direction are exactly what ITK (and Slicer) would give. Anything unusual (data
scaling, non-native byte order, 4D, vectors, a pixel type ITK would convert)
returns None and the caller uses ITK for the whole read.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from .volume import Volume


def gunzip(data: bytes) -> bytes:
    """Inflate a whole gzip file (CRC and length checked); ISA-L when available."""
    try:
        from isal import igzip, isal_zlib
    except ImportError:  # optional speed-up
        return gzip.decompress(data)
    try:
        return igzip.decompress(data)
    except isal_zlib.error as e:  # not an OSError: make it the zlib error the caller reports
        raise zlib.error(str(e)) from e


def _eligible_header(p: Path):
    """The file's raw NIfTI header if it can skip ITK's pixel reader, else None.

    Raw: read from the stream as stored (nibabel's ``load().header`` is a copy prepared for
    writing, with vox_offset reset and scaling folded).
    """
    import nibabel as nib

    with gzip.open(p, "rb") as fh:
        magic = fh.read(348)[344:347]
    cls = {b"n+1": nib.Nifti1Header, b"n+2": nib.Nifti2Header}.get(magic)
    if cls is None:
        return None  # a .hdr/.img pair or an odd file: ITK
    with gzip.open(p, "rb") as fh:
        hdr = cls.from_fileobj(fh, check=False)
    slope, inter = float(hdr["scl_slope"]), float(hdr["scl_inter"])
    if slope not in (0.0, 1.0) or inter != 0.0:
        return None  # ITK would scale (and convert to float): leave that to ITK
    dtype = hdr.get_data_dtype()
    if not dtype.isnative or dtype.kind not in "iuf" or len(hdr.get_data_shape()) != 3:
        return None
    if int(hdr.get_data_offset()) < hdr.sizeof_hdr + 4:
        return None  # an offset inside the header: ITK's NIfTI library has its own rule for that
    return hdr


def read_nii_gz(p: Path) -> Optional[Volume]:
    """The volume, or None when ITK should read this file. Raises on a damaged stream or header lie
    (``_need`` in io gives the caller's message)."""
    import SimpleITK as sitk

    from .io import _need

    hdr = _eligible_header(p)
    if hdr is None:
        return None
    info = sitk.ImageFileReader()
    info.SetFileName(str(p))
    try:
        info.ReadImageInformation()
    except RuntimeError:
        return None  # ITK's full read produces the specific message
    shape = tuple(int(s) for s in hdr.get_data_shape())
    if info.GetDimension() != 3 or info.GetNumberOfComponents() != 1 or tuple(info.GetSize()) != shape:
        return None
    dtype = hdr.get_data_dtype()
    probe = sitk.GetImageFromArray(np.zeros((1, 1, 1), dtype=dtype))
    if probe.GetPixelID() != info.GetPixelID():
        return None  # ITK would deliver another pixel type
    data = gunzip(p.read_bytes())
    offset, count = int(hdr.get_data_offset()), int(np.prod(shape, dtype=np.int64))
    _need(p, len(data), offset + count * dtype.itemsize)
    # NIfTI stores i fastest: C order (k, j, i), ITK's array order. Copy: the buffer is read-only.
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape[::-1]).copy()
    return Volume(arr, info.GetSpacing(), info.GetOrigin(), np.array(info.GetDirection()).reshape(3, 3),
                  metadata={"components": 1, "source_path": str(p),
                            "pixel_type": sitk.GetPixelIDValueAsString(info.GetPixelID())})
