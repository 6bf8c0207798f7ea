"""Keep ITK's raw ``WARNING: In .../itkXxx.cxx, line N`` lines off the user's terminal.

ITK prints its warnings straight to stderr, with source paths and object addresses
that mean nothing to a user. The conditions behind the ones our inputs can trigger
(sheared or tilted grids, uneven slices, NIfTI sform/qform problems) are checked by
the engine itself and reported as our own errors or warnings, so ITK's display is
switched off while the engine reads or writes, and restored afterwards (Slicer and
other modules in the same process keep their setting).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_depth = 0
_saved = True


@contextmanager
def quiet_itk() -> Iterator[None]:
    """Switch off ITK's global warning display inside the block (re-entrant, thread-safe)."""
    import SimpleITK as sitk

    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = bool(sitk.ProcessObject_GetGlobalWarningDisplay())
            sitk.ProcessObject_SetGlobalWarningDisplay(False)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                sitk.ProcessObject_SetGlobalWarningDisplay(_saved)
