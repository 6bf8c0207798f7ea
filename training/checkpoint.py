"""``last_<stage>.pt``: the resumable training state, written and read without running pickled code.

A run folder may be shared, so ``--resume`` must treat the file as untrusted: it is read with
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers. Everything the
trainer stores is therefore kept in that form (RNG states as tensors and numbers, never numpy
objects) and tagged ``{"format": FORMAT, "version": VERSION}`` so a foreign or future file is named
as such instead of failing later with a ``KeyError``.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from LiverCTSegmentationLib.engine.errors import LiverSegError

FORMAT = "liverct-checkpoint"
VERSION = 1
#: Entries every checkpoint of this format holds (``summary``/``stopped_early`` once ``done``).
REQUIRED = {"model": Mapping, "optimizer": Mapping, "scheduler": Mapping, "rng": Mapping, "epoch": int,
            "history": list, "best": (int, float), "bad_epochs": int, "stage": str, "done": bool}
_NEXT = "delete it, or train this stage from scratch by running without --resume"


class CheckpointError(LiverSegError, ValueError):
    """``last_<stage>.pt`` cannot be resumed from (foreign, damaged, incompatible or unsafe)."""

    code = "checkpoint"


def plain(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays as python numbers/tensors: what weights_only loading accepts."""
    import numpy as np
    import torch

    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    raise TypeError(f"checkpoint entry of type {type(obj).__name__} would not load with weights_only=True")


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` via a temporary file: a crash mid-write leaves the previous file intact."""
    import torch

    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(state: Mapping[str, Any], path: Path) -> None:
    """Write the training state, tagged with this format, so it loads with weights_only=True."""
    atomic_save({**plain(state), "format": FORMAT, "version": VERSION}, path)


def read_weights_only(path: str | Path, next_step: str = _NEXT) -> Any:
    """``torch.load(weights_only=True)`` on CPU; each failure becomes a CheckpointError ending in ``next_step``.

    torch's own message is not passed on: it advises ``weights_only=False``, the very thing to avoid here.
    """
    import torch

    try:
        with warnings.catch_warnings():  # torch's "file an issue" pickle-protocol notes are not the user's concern
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; {next_step}") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e.strerror or e}); {next_step}") from None
    except pickle.UnpicklingError as e:
        # The refusal names the blocked object ("GLOBAL posix.system"); garbage only gives an opcode.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise CheckpointError(
                f"{path} was refused: it holds a pickled Python object ({found.group(1)}) that could run code "
                f"when loaded, which a liverseg-train checkpoint never contains (it was written by an older "
                f"liverseg-train or by something else); {next_step}") from None
        raise CheckpointError(f"{path} is damaged or not a PyTorch file; {next_step}") from None
    except (RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile, IndexError):
        # Truncated zip ("failed finding central directory"), empty file, text or random bytes.
        raise CheckpointError(f"{path} is damaged (truncated or not a PyTorch file); {next_step}") from None


def load_checkpoint(path: str | Path, stage: str) -> dict[str, Any]:
    """The training state of ``stage`` from ``path``, checked to be this tool's format and version."""
    path = Path(path)
    obj = read_weights_only(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a liverseg-train training checkpoint (no '{FORMAT}' format tag); "
                              f"{_NEXT}")
    version = obj.get("version")
    if version != VERSION:
        raise CheckpointError(f"{path} is a checkpoint of format version {version}, but this liverseg-train "
                              f"reads version {VERSION}; {_NEXT}")
    if obj.get("stage") != stage:
        raise CheckpointError(f"{path} holds the {obj.get('stage')!r} stage, not {stage!r}; {_NEXT}")
    required = dict(REQUIRED, **({"summary": Mapping, "stopped_early": bool} if obj.get("done") else {}))
    bad = [k for k, kind in required.items() if not isinstance(obj.get(k), kind)]
    if bad:
        raise CheckpointError(f"{path} is damaged: entries {', '.join(bad)} are missing or malformed; {_NEXT}")
    return obj


def restore(ckpt: Mapping[str, Any], path: Path, model, opt, sched, scaler=None) -> None:
    """Load model/optimiser/scheduler/scaler/RNG state; a mismatch with this config is a CheckpointError."""
    from .determinism import set_rng_state

    try:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        why = " ".join(str(e).split())[:240] or type(e).__name__  # torch's first line alone names no tensor
        raise CheckpointError(f"{path} does not fit this config's stage '{ckpt['stage']}' (different network or "
                              f"optimiser: {why}); {_NEXT}") from None
    try:
        set_rng_state(ckpt["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path} is damaged: its random-number state cannot be restored ({e}); "
                              f"{_NEXT}") from None
