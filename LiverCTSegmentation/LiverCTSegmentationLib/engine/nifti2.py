"""NIfTI-2 input, which this build of ITK cannot open ("unable to determine ImageIO reader").

The header is rewritten as NIfTI-1 (same dimensions, pixdim, qform, sform, scaling,
units; NIfTI-1 stores the matrices in float32, a 1e-7 relative change) and the
voxel bytes are copied behind it into a temporary file that ITK reads. So origin,
spacing, direction and scaling follow exactly ITK's (and 3D Slicer's) NIfTI-1
rules, not a second interpretation of the header.
"""
from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import InputError
from .volume import Volume

# Header fields NIfTI-1 and NIfTI-2 share by name and meaning (layout and widths differ).
_SHARED = ("dim_info", "dim", "intent_p1", "intent_p2", "intent_p3", "intent_code", "datatype", "bitpix",
           "slice_start", "pixdim", "scl_slope", "scl_inter", "slice_end", "slice_code", "xyzt_units",
           "cal_max", "cal_min", "slice_duration", "toffset", "descrip", "aux_file", "qform_code", "sform_code",
           "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y",
           "srow_z", "intent_name")
_INT16_MAX = 32767


def as_nifti1_header(p: Path, hdr2: Any) -> Any:
    """The NIfTI-1 header equivalent to NIfTI-2 header ``hdr2`` (same byte order), data at offset 352."""
    import nibabel as nib

    dims = [int(v) for v in hdr2["dim"]]
    if max(dims[1:]) > _INT16_MAX:
        raise InputError(f"'{p}' is a NIfTI-2 image with {max(dims[1:])} voxels along one axis, more than this "
                         "reader supports (32767). Crop or downsample it, or save it as NRRD.")
    h1 = nib.Nifti1Header(endianness=hdr2.endianness)
    for key in _SHARED:
        h1[key] = hdr2[key]
    h1["vox_offset"] = 352
    h1["magic"] = b"n+1"
    return h1


def read_nifti2(p: Path, hdr2: Any, need: int) -> Volume:
    """Read NIfTI-2 file ``p`` (raw header ``hdr2``, ``need`` = header + voxel bytes) through ITK."""
    import SimpleITK as sitk

    from .file_errors import itk_reason, need_bytes
    from .itk_quiet import quiet_itk

    h1 = as_nifti1_header(p, hdr2)
    offset = int(hdr2.get_data_offset())
    n_data = need - offset
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    with tempfile.TemporaryDirectory(prefix="liverct-nifti2-") as tmp:
        one = Path(tmp) / "image.nii"
        with opener(p, "rb") as src, open(one, "wb") as dst:
            dst.write(h1.binaryblock + b"\0" * 4)  # 348-byte header + empty extension flag
            src.seek(offset)
            shutil.copyfileobj(src, dst, 16 << 20)
            got = dst.tell() - 352
        need_bytes(p, offset + got, need)
        if got > n_data:
            with open(one, "r+b") as dst:
                dst.truncate(352 + n_data)
        try:
            with quiet_itk():
                img = sitk.ReadImage(str(one))
        except RuntimeError as e:
            raise InputError(f"Cannot read the NIfTI-2 file '{p}': {itk_reason(e)}. Re-export it as NIfTI-1 "
                             "(.nii.gz) or NRRD.") from e
    vol = Volume.from_sitk(img, source_path=str(p), pixel_type=img.GetPixelIDTypeAsString())
    vol.metadata["nifti_version"] = 2
    return vol

