"""Fast path for the most common input: a plain 3D scalar .nii.gz.

ITK inflates a .nii.gz with zlib on one core, and ``io.read_volume`` must also
check the whole stream (ITK does not notice every truncation). Here the file
is inflated once, in Python, checking the gzip trailer (CRC-32 and length):

- with 4 or more usable cores and ``rapidgzip`` installed, in parallel, straight
  into the volume's array (``bench/bench_io.py``, 512x512x300 CT: 0.17 s against
  0.64 s with ISA-L on a 16-core GPU host; on 2 cores no faster than ISA-L,
  0.36-0.54 s against 0.35-0.37 s);
- otherwise with ISA-L (``isal``) in one call. Inflating with Python's zlib is no
  faster than ITK's read with the stream check beside it (0.59-0.77 s vs
  0.55-0.72 s, ``bench/bench_io.py``), so without either library this returns
  None and ITK's own pixel reader is used.

Geometry always comes from ITK's own header reader, so origin, spacing and
direction are exactly what ITK (and Slicer) would give. Anything unusual (data
scaling, non-native byte order, 4D, vectors, a pixel type ITK would convert)
returns None and the caller uses ITK for the whole read.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .volume import Volume


def _isal():
    try:
        from isal import igzip, isal_zlib
    except ImportError:  # optional speed-up: without it io reads through ITK
        return None
    return igzip, isal_zlib


PARALLEL_MIN_CORES = 4  # below this ISA-L's single-threaded inflate is faster (bench/bench_io.py)


def _rapidgzip():
    from .device import usable_cores

    if usable_cores() < PARALLEL_MIN_CORES:
        return None
    try:
        import rapidgzip
    except ImportError:  # optional speed-up on many-core machines
        return None
    return rapidgzip


def _readinto_full(f: Any, buf: memoryview) -> int:
    n = 0
    while n < len(buf):
        got = f.readinto(buf[n:])
        if not got:
            break
        n += got
    return n


def inflate_parallel(rg: Any, p: Path, offset: int, arr: np.ndarray) -> int:
    """Inflate gzip file ``p`` with rapidgzip (``rg``) on all usable cores: bytes ``offset..``
    fill ``arr``, the rest is checked.

    Returns the inflated length (all of it, so the caller can compare it with the header's).
    rapidgzip checks CRC-32 and length at the end; its errors become ``zlib.error``/``EOFError``.
    """
    from .device import usable_cores

    try:
        with rg.open(str(p), parallelization=usable_cores()) as f:
            n = _readinto_full(f, memoryview(bytearray(offset)))
            if n == offset:
                n += _readinto_full(f, memoryview(arr.reshape(-1).view(np.uint8)))
            while True:  # to the end: the trailer's CRC and length are checked there
                block = f.read(16 << 20)
                if not block:
                    return n
                n += len(block)
    except (RuntimeError, ValueError) as e:
        if "end of file" in str(e).lower():
            raise EOFError(f"compressed data ends early ({str(e).splitlines()[-1][:120]})") from e
        raise zlib.error(str(e).splitlines()[0][:200]) from e


def gunzip(data: bytes) -> bytes:
    """Inflate a whole gzip file with ISA-L (CRC and length checked); errors become ``zlib.error``."""
    igzip, isal_zlib = _isal()
    try:
        return igzip.decompress(data)
    except isal_zlib.error as e:  # not an OSError: make it the zlib error the caller reports
        raise zlib.error(str(e)) from e


def _eligible(hdr: Any) -> bool:
    """True if a file with this raw NIfTI header can skip ITK's pixel reader."""
    if bytes(hdr["magic"])[:3] not in (b"n+1", b"n+2"):
        return False  # not a single-file NIfTI: ITK
    slope, inter = float(hdr["scl_slope"]), float(hdr["scl_inter"])
    if slope not in (0.0, 1.0) or inter != 0.0:
        return False  # ITK would scale (and convert to float): leave that to ITK
    dtype = hdr.get_data_dtype()
    if not dtype.isnative or dtype.kind not in "iuf" or len(hdr.get_data_shape()) != 3:
        return False
    # an offset inside the header: ITK's NIfTI library has its own rule for that
    return int(hdr.get_data_offset()) >= hdr.sizeof_hdr + 4


def read_nii_gz(p: Path, hdr: Any, need: int) -> Optional[Volume]:
    """The volume, or None when ITK should read this file.

    ``hdr``: the file's raw header and ``need``: the bytes it declares, both from io's header
    checks. Raises on a damaged stream or a stream shorter than ``need`` (io maps the errors).
    """
    import SimpleITK as sitk

    from .file_errors import need_bytes
    from .itk_quiet import quiet_itk

    rg = _rapidgzip()  # None below PARALLEL_MIN_CORES or without rapidgzip: ISA-L, else ITK
    if (rg is None and _isal() is None) or not _eligible(hdr):
        return None
    info = sitk.ImageFileReader()
    info.SetFileName(str(p))
    try:
        with quiet_itk():  # io's own header checks report what ITK would warn about
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
    offset, count = int(hdr.get_data_offset()), int(np.prod(shape, dtype=np.int64))
    if rg is not None:
        # NIfTI stores i fastest: C order (k, j, i), ITK's array order.
        arr = np.empty(shape[::-1], dtype=dtype)
        need_bytes(p, inflate_parallel(rg, p, offset, arr), need)
    else:
        # One-shot inflate: ISA-L's whole-buffer call is about twice as fast as streaming into the array.
        data = gunzip(p.read_bytes())
        need_bytes(p, len(data), need)
        # Copy: the buffer is read-only.
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape[::-1]).copy()
    return Volume(arr, info.GetSpacing(), info.GetOrigin(), np.array(info.GetDirection()).reshape(3, 3),
                  metadata={"components": 1, "source_path": str(p),
                            "pixel_type": sitk.GetPixelIDValueAsString(info.GetPixelID())})
