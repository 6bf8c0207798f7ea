"""Average one stage's weights over several runs of a warm-start chain ("model soup").

Why: the CPU rounds each continue from the previous round's weights, so their networks lie in
one basin and a plain average of their weights is itself a good network. Round 4 (small
tumour-heavy patches) and round 5 (large context patches) of the anatomy recipe made different
mistakes; the average of their fine stages beat round 5 alone on every held-out real CT
(leave-one-out liver Dice 0.892 / 0.896 / 0.884 against 0.892 / 0.884 / 0.854, training/README.md).
An average costs nothing at inference, unlike an ensemble of two networks.

A soup run folder is a copy of the last source run (config, split, command, the other stages'
checkpoints) whose ``best_<stage>.pt`` holds the weighted average, plus ``soup.json`` naming the
sources and their SHA256, so ``export``, ``loo --eval-only`` and warm starts treat it like any run.
Given leave-one-out roots (``fold-*/`` and ``final/`` inside), every run folder is souped in turn.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Sequence

from LiverCTSegmentationLib.engine.bundle import sha256_file
from LiverCTSegmentationLib.engine.errors import LiverSegError


class SoupError(LiverSegError):
    """The runs cannot be averaged (missing checkpoint, different architectures)."""


def average_states(states: Sequence[dict], weights: Sequence[float] | None = None) -> dict:
    """The weighted mean of float tensors; integer buffers (BN's batch counters) from the last state."""
    if not states:
        raise SoupError("nothing to average: give at least one run")
    w = [1.0] * len(states) if weights is None else [float(x) for x in weights]
    if len(w) != len(states) or min(w) < 0 or sum(w) <= 0:
        raise SoupError(f"need one non-negative weight per run ({len(states)}), not all zero; got {list(w)}")
    keys = list(states[-1])
    for i, s in enumerate(states):
        if list(s) != keys or any(tuple(s[k].shape) != tuple(states[-1][k].shape) for k in keys):
            raise SoupError(f"run {i + 1}'s network differs from the last run's (tensor names or shapes): "
                            "only runs of one architecture, e.g. one warm-start chain, can be averaged")
    total = sum(w)
    out = {}
    for k in keys:
        ref = states[-1][k]
        if ref.is_floating_point():
            acc = sum(wi * s[k].float() for wi, s in zip(w, states)) / total
            out[k] = acc.to(ref.dtype)
        else:
            out[k] = ref.clone()
    return out


def soup_run(runs: Sequence[Path], out: Path, stage: str = "fine", weights: Sequence[float] | None = None,
             checkpoint: str = "best", overwrite: bool = False) -> Path:
    """Write ``out``: a copy of ``runs[-1]`` whose ``<checkpoint>_<stage>.pt`` is the average over ``runs``."""
    import torch

    from .export import load_state_dict

    runs = [Path(r) for r in runs]
    out = Path(out)
    srcs = [r / f"{checkpoint}_{stage}.pt" for r in runs]
    for s in srcs:
        if not s.is_file():
            raise SoupError(f"{s} not found: each run must have trained stage '{stage}'")
    if out.exists() and not overwrite:
        raise SoupError(f"{out} exists: choose a new folder or pass --overwrite")
    avg = average_states([load_state_dict(s) for s in srcs], weights)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(runs[-1], tmp, ignore=shutil.ignore_patterns("bundle*", "plots", f"last_{stage}.pt", "*.log"))
    torch.save(avg, tmp / f"{checkpoint}_{stage}.pt")
    record = {"stage": stage, "checkpoint": checkpoint,
              "weights": [1.0] * len(runs) if weights is None else [float(w) for w in weights],
              "sources": [{"run": str(r), "sha256": sha256_file(s)} for r, s in zip(runs, srcs)]}
    (tmp / "soup.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    # The card's command: how the last run was trained, then the soup that made these weights.
    cmd = tmp / "command.txt"
    trained = cmd.read_text(encoding="utf-8").strip() + " ; then " if cmd.is_file() else ""
    w = f" --weights {','.join(str(x) for x in record['weights'])}" if weights is not None else ""
    cmd.write_text(f"{trained}liverseg-train soup {' '.join(str(r) for r in runs)} --out {out} --stage {stage}{w} "
                   f"(the {stage} weights: their average, sources in soup.json)\n", encoding="utf-8")
    if out.exists():  # --overwrite: the old soup goes only once the new one is complete
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def run_folders(root: Path) -> list[str]:
    """The run folders' names inside a leave-one-out root, or [""] when ``root`` is itself a run."""
    if (root / "config.yaml").is_file():
        return [""]
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "config.yaml").is_file())
    if not names:
        raise SoupError(f"{root} holds no run folder (config.yaml): give run folders or leave-one-out roots")
    return names


def soup(roots: Sequence[Path], out: Path, stage: str = "fine", weights: Sequence[float] | None = None,
         checkpoint: str = "best", overwrite: bool = False) -> list[Path]:
    """Soup runs, or every run folder of leave-one-out roots (matched by name: fold-chaos with fold-chaos)."""
    roots = [Path(r) for r in roots]
    names = run_folders(roots[-1])
    for r in roots[:-1]:
        missing = [n for n in names if not (r / n / "config.yaml").is_file()]
        if missing:
            raise SoupError(f"{r} lacks run folder(s) {', '.join(missing) or r.name} of {roots[-1]}")
    return [soup_run([r / n for r in roots], Path(out) / n, stage, weights, checkpoint, overwrite) for n in names]


def main_soup(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="liverseg-train soup", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders, or leave-one-out roots, oldest first (the last one is copied)")
    p.add_argument("--out", required=True, help="new folder for the soup run(s)")
    p.add_argument("--stage", default="fine", help="stage to average (default fine; the others are the last run's)")
    p.add_argument("--weights", help="comma-separated weight per run (default equal)")
    p.add_argument("--checkpoint", default="best", help="checkpoint prefix to average (default best)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing soup folder")
    a = p.parse_args(argv)
    weights = [float(w) for w in a.weights.split(",")] if a.weights else None
    for d in soup(a.runs, Path(a.out), a.stage, weights, a.checkpoint, a.overwrite):
        print(f"soup: {d}")
    return 0
