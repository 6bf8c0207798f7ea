"""Atomic single-file writes: write a temporary file beside the target, then ``os.replace`` it.

Used by every engine writer (``io.write_volume``, ``segfile.write_seg_nrrd``), so a failed or
interrupted write never leaves a half file under the final name.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable

from .errors import OutputError
from .file_errors import itk_reason
from .formats import WRITE_SUFFIXES, matching_suffix


def temp_path_for(path: Path) -> Path:
    """Temporary name in the same folder that keeps the extension (ITK picks the format by it)."""
    suffix = matching_suffix(path, (".seg.nrrd",) + WRITE_SUFFIXES) or path.suffix
    stem = path.name[: len(path.name) - len(suffix)]
    return path.with_name(f"{stem}.tmp-{os.getpid()}{suffix}")


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Run ``writer(tmp)`` then move tmp onto ``path``; maps failures to `OutputError`, never leaves tmp behind."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputError(f"'{p}' already exists. Choose another name or allow overwriting.")
    if p.is_dir():
        raise OutputError(f"'{p}' is a folder; give a file name.")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"Cannot create the folder '{p.parent}': {e.strerror}. Choose a writable location.") from e
    tmp = temp_path_for(p)
    try:
        writer(tmp)
        os.replace(tmp, p)
    except OSError as e:
        raise OutputError(_write_failure(p, e)) from e
    except RuntimeError as e:  # ITK reports I/O failures as RuntimeError without errno
        raise OutputError(_write_failure(p, e)) from e
    finally:
        if tmp.exists():
            try:
                tmp.unlink()
            except OSError:
                pass
    return p


def _write_failure(p: Path, e: Exception) -> str:
    code = getattr(e, "errno", None)
    if code == errno.ENOSPC:
        return f"Cannot write '{p}': the disk is full. Free some space or write somewhere else."
    if code in (errno.EACCES, errno.EPERM, errno.EROFS) or not os.access(p.parent, os.W_OK):
        return f"Cannot write '{p}': the folder '{p.parent}' is not writable. Choose another output folder."
    try:
        import shutil

        if shutil.disk_usage(p.parent).free < (1 << 20):
            return f"Cannot write '{p}': the disk is full. Free some space or write somewhere else."
    except OSError:
        pass
    reason = getattr(e, "strerror", None) or itk_reason(e)
    return f"Cannot write '{p}': {reason}. Check the folder and free disk space."
