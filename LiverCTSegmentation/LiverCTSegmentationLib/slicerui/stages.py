"""Progress stage names shown in the panel, and a progress adapter that never steps backwards.

Qt-free so the logic, the background runner and tests share it. Every stage the
engine, worker or faces report has a readable (translatable) name here.
"""
from __future__ import annotations

from typing import Callable, Optional

try:  # Slicer's translation function; plain text elsewhere (slicer-core tests, CLI).
    from slicer.i18n import tr as _
except ImportError:  # pragma: no cover - depends on the environment
    def _(text: str) -> str:
        return text

ProgressCallback = Callable[[float, str], None]

STAGE_NAMES = {
    "starting": _("Starting"),
    "loading": _("Loading image"),
    "preprocess": _("Preparing image"),
    "coarse": _("Finding the liver"),
    "fine": _("Segmenting liver and tumors"),
    "postprocess": _("Cleaning up"),
    "resample": _("Resampling to the input grid"),
    "statistics": _("Computing statistics"),
    "download": _("Downloading model"),
    "importing": _("Creating segments"),
    "done": _("Done"),
}

# Share of the bar the engine (or worker) gets; the rest is for creating segments.
ENGINE_SHARE = 0.95
IMPORT_FRACTION = 0.96


def stage_text(stage: str) -> str:
    """Readable name of ``stage`` (unknown stages are shown as they are)."""
    return STAGE_NAMES.get(stage, stage)


class MonotonicProgress:
    """Forward ``(fraction, stage)`` to ``callback``, never with a smaller fraction than before.

    Engine stages may restart at 0 and the worker reports its own 1.0 before the
    segments are created; a bar that jumps back looks broken, so it is clamped.
    """

    def __init__(self, callback: Optional[ProgressCallback]) -> None:
        self.callback = callback
        self.fraction = 0.0

    def __call__(self, fraction: float, stage: str) -> None:
        self.fraction = max(self.fraction, min(max(float(fraction), 0.0), 1.0))
        if self.callback is not None:
            self.callback(self.fraction, stage)

    def engine(self, fraction: float, stage: str) -> None:
        """Engine/worker progress: scaled into [0, ENGINE_SHARE]; its own "done" is left to the face."""
        if stage == "done":
            return
        self(ENGINE_SHARE * min(max(float(fraction), 0.0), 1.0), stage)
