"""Messages for an input file the engine cannot read: shared by every reader (io, nifti2, nifti_gz)."""
from __future__ import annotations

from pathlib import Path

from .errors import InputError


def need_bytes(p: Path, have: int, need: int) -> None:
    """Refuse a file holding fewer bytes than its header declares (ITK would zero-fill the rest)."""
    if have < need:
        raise InputError(
            f"'{p}' holds {have} bytes of image data but its header declares {need}: the file is truncated or "
            "its header is wrong. Re-export or re-copy the file."
        )


def itk_reason(e: Exception) -> str:
    """The one line of an ITK exception a user can act on."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if "Unable to determine ImageIO reader" in str(e):
        return "the content does not match any known image format (wrong extension or not an image)"
    return lines[-1][:200]
