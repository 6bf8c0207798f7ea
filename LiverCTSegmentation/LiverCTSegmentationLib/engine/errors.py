"""Errors a user can act on. Every message says what is wrong and what to do.

Faces (CLI, Slicer, web) print ``str(err)`` without a traceback for these;
any other exception is a bug and is reported as such.
"""
from __future__ import annotations


class LiverSegError(Exception):
    """Base class: a problem with the user's input, model or environment."""

    code = "error"


class InputError(LiverSegError):
    """The image cannot or should not be segmented (unreadable, not CT, not 3D...)."""

    code = "input"


class BundleError(LiverSegError):
    """A model bundle is missing, inconsistent, tampered with or unsafe."""

    code = "model"


class ResourceError(LiverSegError):
    """Not enough memory/disk, or an unavailable device."""

    code = "resource"


class OutputError(LiverSegError):
    """Results cannot be written (unwritable folder, full disk, existing file)."""

    code = "output"


class Cancelled(LiverSegError):
    """The user cancelled the run."""

    code = "cancelled"


# torch reports a failed CPU allocation as a plain RuntimeError whose text (c10 alloc_cpu.cpp) says
# "DefaultCPUAllocator: can't allocate memory" (Linux/macOS) or "... not enough memory" (Windows).
_CPU_OOM_TEXTS = ("can't allocate memory", "not enough memory")


def is_cpu_out_of_memory(exc: BaseException) -> bool:
    """True for a host-memory allocation failure: MemoryError or torch's allocator RuntimeError.

    A CUDA out-of-memory error is not one: it has its own message (stage_pass.run_stage).
    """
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, RuntimeError) or type(exc).__name__ == "OutOfMemoryError":
        return False
    text = str(exc)
    return any(t in text for t in _CPU_OOM_TEXTS)

