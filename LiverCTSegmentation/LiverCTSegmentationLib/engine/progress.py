"""Progress reporting and cooperative cancellation shared by all faces.

A progress callback receives ``(fraction in [0, 1], stage name)``. Long loops
call ``Progress.check()`` so that a cancel request stops work between windows.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

from .errors import Cancelled

ProgressCallback = Callable[[float, str], None]


class Progress:
    """Maps stage-local progress onto an overall fraction and checks for cancel."""

    def __init__(
        self,
        callback: Optional[ProgressCallback] = None,
        cancel_event: Optional[threading.Event] = None,
    ) -> None:
        self.callback = callback
        self.cancel_event = cancel_event
        self._lo, self._hi, self._stage = 0.0, 1.0, ""

    def stage(self, name: str, start: float, end: float) -> "Progress":
        """Enter a stage occupying [start, end] of the whole run."""
        self.check()
        self._lo, self._hi, self._stage = start, end, name
        self.report(0.0)
        return self

    def report(self, local_fraction: float, stage: Optional[str] = None) -> None:
        if self.callback is not None:
            f = self._lo + (self._hi - self._lo) * min(max(local_fraction, 0.0), 1.0)
            self.callback(f, stage or self._stage)

    def check(self) -> None:
        if self.cancel_event is not None and self.cancel_event.is_set():
            raise Cancelled("Segmentation was cancelled by the user.")
