"""Uploaded CT files: size-limited, sanitised names, written to a private temp folder.

Uploads never land in the data folder; they live in a ``mkdtemp`` folder
(mode 0700) removed when the app stops.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from ..engine.errors import InputError
from .safe_paths import CT_SUFFIXES, _has_suffix

DEFAULT_MAX_UPLOAD_MB = 1024
# Single-file formats only: a .mhd/.nhdr header would need its data file too.
UPLOAD_SUFFIXES = tuple(s for s in CT_SUFFIXES if s not in (".mhd", ".nhdr"))


class UploadError(InputError):
    """An uploaded file was refused (too large, wrong type, empty)."""


def safe_upload_name(name: str) -> str:
    """Base name only, with anything but ``[A-Za-z0-9._-]`` replaced; keeps the extension."""
    base = re.split(r"[\\/]", str(name or ""))[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    return base[:120] or "upload"


class UploadStore:
    """Private folder holding uploaded files for one app process."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1024 * 1024) -> None:
        self.max_bytes = int(max_bytes)
        self.folder = Path(tempfile.mkdtemp(prefix="liverseg-web-upload-"))
        os.chmod(self.folder, 0o700)
        self._n = 0

    def check_size(self, name: str, size: int) -> None:
        if size <= 0:
            raise UploadError(f"'{name}' is empty. Upload the CT file itself.")
        if size > self.max_bytes:
            raise UploadError(
                f"'{name}' is {size / 2**20:.0f} MB, above the upload limit of {self.max_bytes / 2**20:.0f} MB. "
                "Put the file in the data folder instead, or restart with a larger --max-upload-mb.")

    def save(self, name: str, content: bytes) -> Path:
        """Validate and write one upload; returns its private path."""
        clean = safe_upload_name(name)
        if not _has_suffix(clean, UPLOAD_SUFFIXES):
            raise UploadError(
                f"'{clean}' is not a supported CT file. Upload one of: {', '.join(UPLOAD_SUFFIXES)}.")
        self.check_size(clean, len(content or b""))
        self._n += 1
        target = self.folder / f"{self._n:04d}_{clean}"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        return target

    def owns(self, path: Path) -> bool:
        """True for a file in this store's private folder (an upload, not a data-folder CT)."""
        return Path(path).parent == self.folder

    def discard(self, path: Path) -> None:
        """Remove one upload (after it failed to load, or when another CT replaced it)."""
        p = Path(path)
        if self.owns(p) and p.exists():
            p.unlink()

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
