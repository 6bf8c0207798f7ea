"""The C heap between stages: give freed memory back to the OS, or keep it for the next stage.

glibc returns large freed blocks to the OS at once (each is its own mmap) and the engine trims the
heap after every network pass (``release_free_memory``), so a later stage's arrays are fresh pages
the kernel must fault in and zero again. In a long-lived process (Slicer, the web app) that keeps
the resident size low between cases. A one-shot process (the ``liverseg`` command) gains nothing
from it: ``keep_freed_memory`` makes glibc serve every block from its heap and keep what is freed,
so each page is faulted once per process and reused by the next stage. Measured on a VM that hands
free memory back to its host (bench/RESULTS.md, 2026-12-05): a 512x512x150 CT went from 3.9-4.2 s
to 1.8-2.0 s from reading to writing, with the same peak RSS. A no-op where libc is not glibc.
"""
from __future__ import annotations

import ctypes
from typing import Any

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int): freed memory stays in the heap

_libc: Any = None
_keep = False


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL("libc.so.6")
            _libc = lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    return _libc


def keep_freed_memory() -> bool:
    """For the rest of this process, serve large blocks from the heap and never trim it (glibc).

    Only for processes that exit after their work: the resident size stays at its high-water mark.
    Returns True when applied."""
    global _keep
    libc = _glibc()
    if not libc:
        return False
    _keep = bool(libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, _NEVER_TRIM) == 1)
    return _keep


def keeps_freed_memory() -> bool:
    """True once ``keep_freed_memory`` has been applied in this process."""
    return _keep


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc only; a no-op elsewhere, and once this process
    keeps its freed memory).

    After a network pass, glibc keeps hundreds of MB of freed activation buffers in its arenas;
    in a long-lived process, without a trim they add to the next stage's peak RSS."""
    libc = _glibc()
    if libc and not _keep:
        libc.malloc_trim(0)
