"""Model choices for the panel and ``model`` argument -> loaded bundle. Slicer-free.

Used by the logic, the widget's model combo box and the background worker.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOAD_FROM_DISK = "__load_from_disk__"


@dataclass
class ModelChoice:
    """One entry of the model combo box: ``key`` is what ``load_bundle`` accepts."""

    key: str
    label: str
    tooltip: str = ""
    installed: bool = True
    default: bool = False
    demo: bool = False


def load_bundle(model: Any = None):
    """``model`` -> loaded ``ModelBundle``.

    Accepts a ``ModelBundle``, a bundle folder (or its ``model.json``), a
    registry name understood by ``models.resolve_model``, or None/"" for the
    default model. Raises ``BundleError`` with a message saying what to do.
    """
    from ..engine.bundle import ModelBundle
    from ..engine.errors import BundleError

    if isinstance(model, ModelBundle):
        return model
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise BundleError(f"Unsupported model specification {model!r}.")
    text = "" if model is None else str(model)
    p = Path(text) if text else None
    if p is not None and p.name == "model.json":
        p = p.parent
    if p is not None and (p / "model.json").is_file():
        return ModelBundle.load(p)
    if p is not None and (os.sep in text or (os.altsep and os.altsep in text)) and not p.exists():
        raise BundleError(f"Model folder {text!r} does not exist. Select a folder that contains model.json.")
    try:
        from .. import models
    except ImportError as e:
        raise BundleError(
            f"Model {text or '(default)'!r} is not a bundle folder and the model registry is unavailable ({e}). "
            "Select a folder that contains model.json."
        ) from e
    resolved = models.resolve_model(text or None)
    if isinstance(resolved, ModelBundle):
        return resolved
    return ModelBundle.load(resolved)


def _field(entry: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        if isinstance(entry, dict) and n in entry:
            return entry[n]
        if hasattr(entry, n):
            return getattr(entry, n)
    return default


def list_model_choices() -> list[ModelChoice]:
    """Bundled, installed and downloadable (manifest) models, then "Load from disk…".

    Never raises: a broken registry just yields fewer entries.
    """
    choices: list[ModelChoice] = []
    try:
        from .. import models

        for entry in models.list_models():
            name = str(_field(entry, "name", "key", default=entry))
            version = _field(entry, "version", default="")
            status = _field(entry, "status", default=None)
            if status is not None:  # models.ModelInfo: bundled | installed | not downloaded | missing
                if status == "missing":
                    continue
                installed = status in ("bundled", "installed")
            else:
                installed = bool(_field(entry, "installed", "available", default=True))
            demo = bool(_field(entry, "demo", default=False))
            label = name + (f" {version}" if version else "")
            if demo:
                label += " (demo)"
            if not installed:
                label += " (download)"
            desc = str(_field(entry, "description", default="") or "")
            choices.append(ModelChoice(name, label, desc, installed, bool(_field(entry, "default", default=False)), demo))
    except Exception:  # noqa: BLE001 - registry missing or broken: offer disk loading only
        pass
    if not choices:
        choices.append(ModelChoice("", "Default model", demo=True))
    else:  # default model first
        choices.sort(key=lambda c: not c.default)
    choices.append(ModelChoice(LOAD_FROM_DISK, "Load from disk\u2026", "Select a model bundle folder (with model.json)"))
    return choices


def download_if_needed(key: str, progressCallback=None) -> bool:
    """Download a manifest model that is not installed yet. True if a download happened."""
    if not key or key == LOAD_FROM_DISK or os.path.isdir(key):
        return False
    choice = next((c for c in list_model_choices() if c.key == key), None)
    if choice is None or choice.installed:
        return False
    from .. import models

    models.download_model(key, progress=progressCallback)
    return True
