"""One segmentation at a time, and its result only into the scene it was started for.

While the model runs, opening another CT, uploading or saving would race
with the result: the old CT's labelmap could land on the new CT's scene, or
a half-updated scene could be saved. The app refuses those actions while
busy (``BusyError``) and, as a second line of defence, compares the scene
identity taken at the start of a run with the one at its end
(``SceneIdentity``) and drops a result whose CT changed meanwhile.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..engine.errors import InputError


class BusyError(InputError):
    """An action was refused because a segmentation is running."""


class StaleResultError(InputError):
    """A finished run's CT is no longer the open one; its result was dropped."""


def refuse_while_busy(busy: bool, action: str) -> None:
    """Raise ``BusyError`` with a message the page can show as is."""
    if busy:
        raise BusyError(f"A segmentation is running: wait for it to finish before {action}.")


@dataclass(frozen=True, eq=False)
class SceneIdentity:
    """The objects a run belongs to; compared by identity, not value (two CTs may be equal)."""

    ct: Any
    volume_node: Any
    segmentation_node: Any

    @classmethod
    def of(cls, app: Any) -> "SceneIdentity":
        return cls(app.ct, app.volume_node, app.segmentation_node)

    def still_current(self, app: Any) -> bool:
        return (app.ct is self.ct and app.volume_node is self.volume_node
                and app.segmentation_node is self.segmentation_node
                and self.segmentation_node is not None and self.segmentation_node.GetScene() is not None)
