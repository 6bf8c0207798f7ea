"""Reading and writing images as `Volume`s (NIfTI, NRRD, MetaImage, DICOM series).

ITK silently returns zero-filled or garbled voxels for truncated or corrupted
compressed NIfTI/NRRD/MetaImage files, so the file's structure is verified here
(declared data size, gzip/zlib checksums) before ITK reads it. Every failure the
user can act on becomes an `InputError`/`OutputError` naming the file.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .atomic_write import atomic_write
from .errors import InputError, OutputError
from .file_errors import itk_reason, need_bytes
from .formats import READ_SUFFIXES, WRITE_SUFFIXES, matching_suffix  # noqa: F401 - public names of io
from .itk_quiet import quiet_itk
from .input_files import files_read
from .volume import Volume, is_orthonormal

_CHUNK = 16 << 20
_DEFLATE_MAX_RATIO = 1032  # the largest expansion a deflate stream can encode


# --------------------------------------------------------------------- read
def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 3D image file or a DICOM series folder; raises `InputError` on any problem."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"Input not found: '{p}'. Check the path and that the file was copied completely.")
    # Only regular files are opened: a FIFO or a device (/dev/zero) would hang the reader.
    files_read(p)
    if p.is_dir():
        from .dicom import read_dicom_series

        return read_dicom_series(p)
    suffix = matching_suffix(p, READ_SUFFIXES)
    if suffix is None:
        if p.name.lower().endswith((".dcm", ".ima")):
            raise InputError(f"'{p}' is a single DICOM file: pass the folder that holds the whole series instead.")
        raise InputError(
            f"Unsupported file type: '{p.name}'. Use NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), "
            "MetaImage (.mha, .mhd) or a folder with a DICOM series."
        )
    if not os.access(p, os.R_OK):
        raise InputError(f"Cannot read '{p}': permission denied. Check the file's permissions.")
    if p.stat().st_size == 0:
        raise InputError(f"'{p}' is empty (0 bytes). The file was not saved or copied completely.")
    # Header checks first (cheap; they bound what ITK will allocate). A slow remaining check
    # (decompressing a .nii.gz to its end to catch truncation) runs in a thread beside ITK's read:
    # zlib and ITK both release the GIL, so the file is checked at no extra wall time.
    deferred = _validated(p, lambda: _VALIDATORS[suffix](p))
    if isinstance(deferred, _Nifti2):
        from .nifti2 import read_nifti2

        nifti2 = deferred
        return _validated(p, lambda: read_nifti2(p, nifti2.header, nifti2.need))
    if isinstance(deferred, _GzNifti):
        from .nifti_gz import read_nii_gz

        gz = deferred
        vol = _validated(p, lambda: read_nii_gz(p, gz.header, gz.need))  # one inflate; None: ITK reads it
        if vol is not None:
            return vol

    import SimpleITK as sitk

    with ThreadPoolExecutor(1) if deferred else nullcontext() as pool:
        pending = pool.submit(_validated, p, deferred) if pool else None
        try:
            with quiet_itk():  # the conditions behind ITK's warnings are checked above, in our words
                img, itk_error = sitk.ReadImage(str(p)), None
        except RuntimeError as e:
            img, itk_error = None, e
        if pending is not None:
            pending.result()  # its InputError (truncated, corrupted) wins over ITK's message
    if itk_error is not None:
        raise InputError(f"Cannot read '{p}' as {suffix} image: {itk_reason(itk_error)}. "
                         "The file may be corrupted, truncated or not really a medical image; re-export it."
                         ) from itk_error
    vol = Volume.from_sitk(img, source_path=str(p), pixel_type=img.GetPixelIDTypeAsString())
    return vol


def _validated(p: Path, check: Callable[[], Any]) -> Any:
    """Run a structure check; low-level read errors become one clear InputError."""
    try:
        return check()
    except InputError:
        raise
    except (OSError, EOFError, zlib.error, ValueError, KeyError, IndexError) as e:
        raise InputError(f"'{p}' is corrupted or truncated ({e}). Re-export or re-copy the file.") from e


# ------------------------------------------------------- structure checks
def _drain_gzip(fileobj: Any) -> int:
    """Decompress a gzip stream to the end (checks CRC and length); returns byte count."""
    n = 0
    with gzip.GzipFile(fileobj=fileobj, mode="rb") as g:
        while True:
            block = g.read(_CHUNK)
            if not block:
                return n
            n += len(block)


def _drain_zlib(fh: Any) -> int:
    d = zlib.decompressobj()
    n = 0
    while True:
        block = fh.read(_CHUNK)
        if not block:
            break
        n += len(d.decompress(block))
        if d.eof:
            break
    n += len(d.flush())
    if not d.eof:
        raise EOFError("compressed data ends before its end marker")
    return n


_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI_SIZEOF_HDR = {348, 540}  # NIfTI-1, NIfTI-2


def _check_nifti_compression(p: Path) -> None:
    """A gzip stream named .nii (or a plain NIfTI named .nii.gz) is read by its name, and fails as 'not NIfTI'."""
    with open(p, "rb") as fh:
        head = fh.read(4)
    gz = p.name.lower().endswith(".gz")
    if not gz and head[:2] == _GZIP_MAGIC:
        raise InputError(f"'{p}' is gzip-compressed although its name ends in .nii: rename it to "
                         f"'{p.name}.gz' and read it again.")
    if gz and len(head) == 4 and head[:2] != _GZIP_MAGIC and \
            _NIFTI_SIZEOF_HDR & {int.from_bytes(head, "little"), int.from_bytes(head, "big")}:
        raise InputError(f"'{p}' is an uncompressed NIfTI file although its name ends in .gz: rename it to "
                         f"'{p.name[:-3]}' and read it again.")


def _check_nifti(p: Path) -> Optional[Callable[[], None]]:
    """Header checks now; for .nii.gz returns the full-stream check to run beside the read."""
    from .nifti_header import read_plain_header

    _check_nifti_compression(p)
    # A plain NIfTI-1 header is parsed without importing nibabel (a third of a second); any other
    # goes through nibabel's checked load, whose errors are the messages below.
    raw = read_plain_header(p)
    if raw is None:
        raw = _nibabel_raw_header(p)
    pixdim = np.asarray(raw["pixdim"], dtype=float)[1:1 + min(3, max(1, len(raw.get_data_shape())))]
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise InputError(
            f"'{p}' declares invalid voxel spacing {tuple(float(v) for v in pixdim)} mm in its NIfTI header "
            "(pixdim must be positive numbers). Fix the header or re-export the image from the scanner or PACS."
        )
    _check_sform(p, raw)
    # The raw header's offset: the one nibabel's load() returns is reset to 0 for writing.
    need = int(raw.get_data_offset()) + int(np.prod(raw.get_data_shape(), dtype=np.int64)) * raw.get_data_dtype().itemsize
    if raw.sizeof_hdr == 540:  # NIfTI-2 (only nibabel's path returns one)
        if not p.name.lower().endswith(".gz"):
            need_bytes(p, p.stat().st_size, need)
        return _Nifti2(p, raw, need)
    if not p.name.lower().endswith(".gz"):
        need_bytes(p, p.stat().st_size, need)
        return None
    # deflate expands at most ~1032:1, so a header declaring more than that is a lie or a truncation:
    # refuse it before ITK allocates the declared size.
    need_bytes(p, p.stat().st_size * _DEFLATE_MAX_RATIO, need)
    return _GzNifti(p, raw, need)


def _nibabel_raw_header(p: Path) -> Any:
    """The raw header (nibabel's, NIfTI-1 or -2) of a file nibabel's checked load accepts."""
    import nibabel as nib

    try:
        hdr = nib.load(str(p)).header
    except Exception as e:  # nibabel raises many types for bad headers
        raise InputError(f"'{p}' is not a valid NIfTI file ({e}). Check the file type or re-export it.") from e
    # ITK (and nibabel's checked load) silently read pixdim 0 / NaN as 1 mm: volumes would be
    # wrong by an unknown factor, so read the raw header again without nibabel's fixes.
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    try:
        with opener(p, "rb") as fh:
            return type(hdr).from_fileobj(fh, check=False)
    except Exception as e:  # same file parsed above; a failure here means a broken stream
        raise InputError(f"'{p}' is not a valid NIfTI file ({e}). Check the file type or re-export it.") from e


def _check_sform(p: Path, raw: Any) -> None:
    """Refuse a sheared sform: ITK then places the image by its qform, sform-based tools by the sform,
    so no result could lie on the image in both."""
    if int(raw["sform_code"]) <= 0:
        return
    m = np.asarray(raw.get_sform(), dtype=float)[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if np.all(norms > 0) and np.isfinite(m).all() and not is_orthonormal(m / norms):
        from .checks import sheared_grid_message

        raise InputError(sheared_grid_message(f"'{p}' (its NIfTI sform)", m))


@dataclass(frozen=True)
class _Nifti2:
    """A NIfTI-2 file that passed the header checks; read by ``nifti2.read_nifti2``."""

    path: Path
    header: Any
    need: int


@dataclass(frozen=True)
class _GzNifti:
    """A .nii.gz that passed the header checks: its raw header and the bytes it must hold.

    Called, it is the full-stream check that runs beside ITK's read; the fast path
    (``nifti_gz.read_nii_gz``) takes the header instead and checks the stream as it inflates it.
    """

    path: Path
    header: Any
    need: int

    def __call__(self) -> None:
        with open(self.path, "rb") as fh:
            need_bytes(self.path, _drain_gzip(fh), self.need)


_NRRD_BYTES = {"signed char": 1, "int8": 1, "int8_t": 1, "uchar": 1, "unsigned char": 1, "uint8": 1, "uint8_t": 1,
               "short": 2, "short int": 2, "signed short": 2, "signed short int": 2, "int16": 2, "int16_t": 2,
               "ushort": 2, "unsigned short": 2, "unsigned short int": 2, "uint16": 2, "uint16_t": 2,
               "int": 4, "signed int": 4, "int32": 4, "int32_t": 4, "uint": 4, "unsigned int": 4, "uint32": 4,
               "uint32_t": 4, "longlong": 8, "long long": 8, "long long int": 8, "signed long long": 8,
               "signed long long int": 8, "int64": 8, "int64_t": 8, "ulonglong": 8, "unsigned long long": 8,
               "unsigned long long int": 8, "uint64": 8, "uint64_t": 8, "float": 4, "double": 8}


def _read_text_header(fh: Any, stop: Callable[[str], bool], what: str, p: Path) -> list[str]:
    lines: list[str] = []
    for _ in range(10000):
        raw = fh.readline()
        if not raw:
            break
        line = raw.decode("latin-1").rstrip("\r\n")
        lines.append(line)
        if stop(line):
            return lines
    raise InputError(f"'{p}' has no complete {what} header. The file is truncated or not a {what} file.")


def _check_nrrd(p: Path) -> None:
    with open(p, "rb") as fh:
        if not fh.read(4) == b"NRRD":
            raise InputError(f"'{p}' does not start with 'NRRD': it is not a NRRD file. Check the file type.")
        fh.seek(0)
        attached = p.name.lower().endswith(".nrrd")
        lines = _read_text_header(fh, lambda ln: ln == "" and attached, "NRRD", p) if attached else \
            [ln.decode("latin-1").rstrip("\r\n") for ln in fh.readlines()[:10000]]
        fields = {}
        for ln in lines[1:]:
            if ":" in ln and not ln.startswith("#") and ":=" not in ln:
                k, v = ln.split(":", 1)
                fields[k.strip().lower()] = v.strip()
        sizes = [int(s) for s in fields.get("sizes", "").split()]
        nbytes = _NRRD_BYTES.get(fields.get("type", "").lower())
        if not sizes or nbytes is None or "line skip" in fields or "lineskip" in fields:
            return  # unusual layout: leave it to ITK
        need = int(np.prod(sizes, dtype=np.int64)) * nbytes
        skip = int(fields.get("byte skip", fields.get("byteskip", "0")))
        if skip < 0:
            return
        encoding = fields.get("encoding", "raw").lower()
        datafile = fields.get("data file", fields.get("datafile"))
        if datafile is None and attached:
            offset = fh.tell()
            target = p
        elif datafile and " " not in datafile and "%" not in datafile and datafile.upper() != "LIST":
            target = p.parent / datafile
            offset = 0
            if not target.exists():
                raise InputError(f"The data file '{target}' named in '{p}' is missing. Copy it next to the header.")
        else:
            return
    with open(target, "rb") as fh:
        fh.seek(offset + (skip if encoding == "raw" else 0))
        if encoding in ("gzip", "gz"):
            have = _drain_gzip(fh)
        elif encoding == "raw":
            have = target.stat().st_size - offset - skip
        else:
            return
    need_bytes(p, have, need)


_MHA_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 8, "MET_ULONG": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def _check_meta(p: Path) -> None:
    with open(p, "rb") as fh:
        lines = _read_text_header(fh, lambda ln: ln.replace(" ", "").startswith("ElementDataFile="), "MetaImage", p)
        fields = {}
        for ln in lines:
            if "=" in ln:
                k, v = ln.split("=", 1)
                fields[k.strip()] = v.strip()
        if "DimSize" not in fields or "ElementType" not in fields:
            raise InputError(f"'{p}' is not a valid MetaImage file (no DimSize/ElementType). Check the file type.")
        _check_meta_geometry(p, fields)
        dims = [int(s) for s in fields["DimSize"].split()]
        comps = int(fields.get("ElementNumberOfChannels", "1"))
        nbytes = _MHA_BYTES.get(fields["ElementType"])
        if nbytes is None:
            return
        need = int(np.prod(dims, dtype=np.int64)) * comps * nbytes
        compressed = fields.get("CompressedData", "False").lower() == "true"
        datafile = fields["ElementDataFile"]
        offset = fh.tell()
    if datafile == "LOCAL":
        target = p
    elif " " in datafile or "%" in datafile or datafile.upper() == "LIST":
        return
    else:
        target = p.parent / datafile
        offset = 0
        if not target.exists():
            raise InputError(f"The data file '{target}' named in '{p}' is missing. Copy it next to the header.")
    with open(target, "rb") as fh:
        fh.seek(offset)
        have = _drain_zlib(fh) if compressed else target.stat().st_size - offset
    need_bytes(p, have, need)


# MetaImage geometry keys and how many numbers each holds for an N-dimensional image.
_META_GEOMETRY = {"DimSize": 1, "ElementSpacing": 1, "Offset": 1, "Origin": 1, "Position": 1,
                  "TransformMatrix": 2, "Rotation": 2, "Orientation": 2}


def _check_meta_geometry(p: Path, fields: dict[str, str]) -> None:
    """Each geometry field must match NDims; ITK's own error for a mismatch is a bare '0 0 0'."""
    try:
        ndims = int(fields.get("NDims", str(len(fields["DimSize"].split()))))
    except ValueError as e:
        raise InputError(f"'{p}' has an invalid NDims line ({fields.get('NDims')!r}). Fix the MetaImage header.") from e
    for key, power in _META_GEOMETRY.items():
        if key not in fields:
            continue
        n, want = len(fields[key].split()), ndims ** power
        if n != want:
            shape, example = "one per axis", ""
            if power == 2:
                identity = " ".join("1" if i % (ndims + 1) == 0 else "0" for i in range(want))
                shape, example = f"a {ndims}x{ndims} direction matrix", f" (axis-aligned: '{key} = {identity}')"
            raise InputError(f"'{p}' is a {ndims}D MetaImage but its {key} has {n} values; it needs {want} "
                             f"({shape}). Fix the {key} line of the header{example} or re-export the image.")


# Each checks a file's structure before ITK reads it; one may return a slow check to run beside the read.
_VALIDATORS: dict[str, Callable[[Path], Optional[Callable[[], None]]]] = {
    ".nii.gz": _check_nifti, ".nii": _check_nifti, ".nrrd": _check_nrrd, ".nhdr": _check_nrrd,
    ".mha": _check_meta, ".mhd": _check_meta,
}


# -------------------------------------------------------------------- write
def write_volume(vol: Volume, path: str | os.PathLike, overwrite: bool = False, compress: bool = True) -> Path:
    """Write NIfTI/NRRD/MHA (by extension), atomically; `OutputError` on failure.

    ``compress=False`` is for scratch files read back at once (Slicer's worker hand-over):
    gzip costs more than the disk it saves there (``bench/bench_io.py``)."""
    p = Path(path)
    if p.name.lower().endswith(".seg.nrrd"):
        raise OutputError(f"'{p.name}': use write_seg_nrrd for Slicer segmentation files.")
    if matching_suffix(p, WRITE_SUFFIXES) is None:
        raise OutputError(f"Unsupported output type '{p.name}'. Use .nii.gz, .nii, .nrrd or .mha.")
    if matching_suffix(p, (".nii.gz", ".nii")) and not is_orthonormal(vol.direction):
        # ITK's NIfTI writer orthogonalises the matrix: the saved image would be moved, not just re-labelled.
        raise OutputError(f"Cannot write '{p.name}' as NIfTI: its voxel grid is sheared and NIfTI would store it "
                          "moved. Write it as .nrrd or .mha, which keep the exact grid.")
    import SimpleITK as sitk

    img = vol.to_sitk()

    def write(tmp: Path) -> None:
        with quiet_itk():
            sitk.WriteImage(img, str(tmp), bool(compress))

    return atomic_write(p, write, overwrite=overwrite)


def write_seg_nrrd(labelmap: Volume, labels: list[dict], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Slicer .seg.nrrd writer (see segfile.py); exposed here as the architecture's io API."""
    from .segfile import write_seg_nrrd as _w

    return _w(labelmap, labels, path, overwrite=overwrite)


def read_dicom_series(folder: str | os.PathLike) -> Volume:
    from .dicom import read_dicom_series as _r

    return _r(folder)


def write_dicom_series(vol: Volume, folder: str | os.PathLike, **kw: Any) -> list[Path]:
    from .dicom import write_dicom_series as _w

    return _w(vol, folder, **kw)
