"""Model choices for the panel and ``model`` argument -> loaded bundle. Slicer-free.

Used by the logic, the widget's model combo box and the background worker.
"""
from __future__ import annotations

import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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
    choices.append(ModelChoice(LOAD_FROM_DISK, "Load from disk\u2026",
                               "Select a model bundle: its model.json, or a .zip archive of the bundle folder"))
    return choices


def selected_bundle_key(path: str) -> str:
    """"Load from disk" selection -> model key: a bundle folder, or a .zip holding one.

    Accepts the bundle folder, its ``model.json``, or a zip archive with
    ``model.json`` at its root or in one top folder (what ``models.resolve_model``
    unpacks). Raises ``BundleError`` saying what to pick instead.
    """
    from ..engine.errors import BundleError

    p = Path(path)
    if p.name == "model.json" and p.is_file():
        return str(p.parent)
    if p.is_dir():
        if (p / "model.json").is_file():
            return str(p)
        raise BundleError(f"The folder '{p}' has no model.json; it is not a model bundle.")
    if p.suffix.lower() == ".zip" and p.is_file():
        try:
            with zipfile.ZipFile(p) as zf:
                names = [n.rstrip("/") for n in zf.namelist()]
        except (OSError, zipfile.BadZipFile) as e:
            raise BundleError(f"'{p.name}' is not a readable zip archive ({e}).") from e
        if any(n == "model.json" or (n.count("/") == 1 and n.endswith("/model.json")) for n in names):
            return str(p)
        raise BundleError(f"The archive '{p.name}' holds no model.json; it is not a zipped model bundle.")
    raise BundleError(f"'{p}' is neither a model bundle folder, its model.json, nor a .zip archive of a bundle.")


def model_for_worker(model: Any) -> str:
    """``--model`` for the background worker: the bundle folder, resolved in this process.

    The worker is a separate Python without ``slicer.app``, so it would look for
    downloaded models in another cache folder and would unpack zips again;
    resolving names and zips here makes both processes use the same bundle.
    """
    from ..engine.bundle import ModelBundle

    if isinstance(model, ModelBundle):
        return str(model.path)
    text = "" if model is None else str(model)
    try:
        from .. import models
    except ImportError:  # registry unavailable: let the worker report what is wrong
        return text
    return str(models.resolve_model(text or None))


def download_with_progress(key: str, dialog: Any, processEvents: Callable[[], None]) -> bool:
    """``download_if_needed`` driving a progress dialog (``value`` 0-100, ``wasCanceled``).

    ``processEvents`` runs on every report so the dialog repaints and its Cancel
    button works during the download. Raises ``Cancelled`` when cancelled (the
    partial download is removed by ``models.download_model``).
    """
    from ..engine.progress import Progress

    cancel = threading.Event()

    def callback(fraction: float, stage: str) -> None:
        dialog.value = int(round(100 * min(max(float(fraction), 0.0), 1.0)))
        processEvents()
        cancelled = getattr(dialog, "wasCanceled", False)
        if cancelled() if callable(cancelled) else cancelled:
            cancel.set()

    return download_if_needed(key, progressCallback=Progress(callback, cancel))


def download_if_needed(key: str, progressCallback=None) -> bool:
    """Download a manifest model that is not installed yet. True if a download happened.

    ``progressCallback``: a ``callback(fraction, stage)`` or an engine ``Progress`` (cancellable).
    """
    if not key or key == LOAD_FROM_DISK or os.path.isdir(key):
        return False
    choice = next((c for c in list_model_choices() if c.key == key), None)
    if choice is None or choice.installed:
        return False
    from .. import models

    models.download_model(key, progress=progressCallback)
    return True
