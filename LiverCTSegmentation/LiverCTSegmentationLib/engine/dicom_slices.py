"""Slice-level checks of a DICOM series that ITK/GDCM pass over silently.

- GDCM leaves a damaged file (truncated pixel data) out of the series without a
  word, so a 30-slice series would be read, and segmented, as 29 slices.
- ITK builds the grid from the first and last slice positions only: a gantry-tilted
  series (each slice shifted sideways, same orientation) becomes a stretched,
  un-sheared grid (3.19 mm instead of 3.0 mm at 20°; the last slice 32 mm off).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import InputError

# Sideways slice offsets up to this fraction of a pixel are rounding in ImagePositionPatient.
_SIDEWAYS_TOL_PIXELS = 0.1
_MAX_NAMED = 3
_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR's SOP class


def check_in_plane(folder: Path, names: list[str], positions: np.ndarray, normal: np.ndarray,
                   pixel_spacing: float) -> None:
    """``positions`` (N, 3) sorted along ``normal``: every slice must lie straight above the first."""
    rel = positions - positions[0]
    along = rel @ normal
    side = rel - np.outer(along, normal)
    tol = _SIDEWAYS_TOL_PIXELS * pixel_spacing
    if np.linalg.norm(side, axis=1).max() <= tol:
        return
    # A tilted gantry shifts every slice by the same amount per mm along the normal.
    per_mm = np.linalg.lstsq(along[:, None], side, rcond=None)[0][0]
    residual = np.linalg.norm(side - np.outer(along, per_mm), axis=1)
    if residual.max() <= tol:
        tilt = float(np.degrees(np.arctan(np.linalg.norm(per_mm))))
        shift = float(np.linalg.norm(side[-1]))
        raise InputError(
            f"The DICOM series in '{folder}' was acquired with a gantry tilt of {tilt:.1f}°: each slice is shifted "
            f"sideways against the previous one ({shift:.1f} mm over the series), which a regular 3D grid cannot "
            "hold, so the result would be misplaced. Convert it to an untilted volume first with dcm2niix or "
            "3D Slicer's DICOM import (both correct gantry tilt) and segment that file."
        )
    worst = int(np.argmax(residual))
    raise InputError(
        f"The DICOM series in '{folder}' has slices shifted sideways against the others (e.g. "
        f"'{Path(names[worst]).name}' by {residual[worst]:.2f} mm), so they do not form one 3D volume. "
        "Re-export or re-copy the series; if it mixes acquisitions, separate them."
    )


def check_left_out(where: Path, series_id: str, listed: list[str]) -> None:
    """Raise if a DICOM file in ``where`` that GDCM left out of every series is a damaged slice of ``series_id``.

    ``listed``: every file GDCM put in a series in ``where``. Files that are not DICOM, or that
    belong to another series (or none: DICOMDIR), are someone else's business.
    """
    known = {os.path.normcase(os.path.realpath(n)) for n in listed}
    damaged: list[tuple[str, str]] = []
    for f in sorted(where.iterdir()):
        if f.is_file() and os.path.normcase(os.path.realpath(f)) not in known:
            reason = _damage(f, series_id)
            if reason:
                damaged.append((f.name, reason))
    if not damaged:
        return
    named = "; ".join(f"'{n}' ({r})" for n, r in damaged[:_MAX_NAMED])
    more = f" and {len(damaged) - _MAX_NAMED} more" if len(damaged) > _MAX_NAMED else ""
    what = "a damaged slice file" if len(damaged) == 1 else f"{len(damaged)} damaged slice files"
    raise InputError(
        f"The DICOM series in '{where}' has {what} that cannot be read: {named}{more}. The volume would lack "
        "those slices. Re-copy or re-export the complete series."
    )


def _damage(f: Path, series_id: str) -> Optional[str]:
    """Why DICOM file ``f`` of ``series_id`` is unreadable; None if it is not DICOM or not of that series."""
    import pydicom

    try:
        with open(f, "rb") as fh:
            head = fh.read(132)
    except OSError as e:
        return f"cannot be opened: {e.strerror}"
    if head[128:132] != b"DICM":
        return None  # not a DICOM file (notes, thumbnails); GDCM skipped it rightly
    try:
        ds = pydicom.dcmread(f)
    except Exception as e:  # pydicom raises many types on broken files
        return f"truncated or damaged: {str(e)[:120]}"
    uid = getattr(ds, "SeriesInstanceUID", None)
    if uid is None:  # a DICOMDIR has none; an image cut inside its header has lost it
        is_dir = str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "")) == _MEDIA_DIRECTORY
        return None if is_dir else "truncated or damaged: its header ends before the series identifier"
    if str(uid) != series_id:
        return None
    data = getattr(ds, "PixelData", None)
    if data is None:
        return "truncated: it ends before its pixel data"
    need = int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
    if not ds.file_meta.TransferSyntaxUID.is_compressed and len(data) < need:
        return f"truncated: {len(data)} of {need} bytes of pixel data"
    return "damaged: the DICOM reader cannot decode it"
