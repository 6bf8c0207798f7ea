"""Model bundles for tests (no training needed).

- ``make_tiny_bundle``: random-weight tiny reduced U-Nets (channels [4, 8, 16]);
  valid and loadable, output is arbitrary (may be empty): plumbing tests.
- ``make_box_bundle``: test-only ``threshold_net`` stages whose output is
  deterministic: "liver" exactly where the CT intensity lies in ``liver_hu``
  (and "tumour" in ``tumor_hu``), so a synthetic volume with a liver-HU box
  gives a known, non-empty physical region.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

LABELS = [
    {"value": 1, "name": "Liver", "color": [221, 130, 101],
     "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"],
                     "type": ["SCT", "10200004", "Liver"]}},
    {"value": 2, "name": "Liver tumor", "color": [144, 238, 144],
     "terminology": {"category": ["SCT", "49755003", "Morphologically Altered Structure"],
                     "type": ["SCT", "108369006", "Neoplasm"],
                     "region": ["SCT", "10200004", "Liver"]}},
]

POSTPROCESS = {"min_lesion_mm3": 30.0, "fill_holes": True, "tumor_max_distance_mm": 5.0}


def _description(name: str, stages: dict, demo: bool = True) -> dict:
    return {
        "format_version": 1,
        "name": name,
        "version": "0.0.1",
        "description": "Test fixture bundle. Not a real model.",
        "demo": demo,
        "labels": [dict(l) for l in LABELS],
        "stages": stages,
        "postprocess": dict(POSTPROCESS),
        "training": {"data": "none", "config": "none", "seed": 0, "command": "Testing/bundle_fixtures.py"},
        "metrics": {},
    }


def tiny_description(two_stage: bool = True, channels=(4, 8, 16)) -> dict:
    """The model.json content (without weights/sha256) of the tiny bundle."""
    stages = {
        "coarse": {
            "architecture": {"name": "reduced_unet3d", "in_channels": 1, "out_channels": 2,
                             "channels": list(channels), "norm": "instance", "dropout": 0.0},
            "spacing": [3.0, 3.0, 3.0],
            "patch_size": [32, 32, 32],
            "intensity": {"clip": [-200.0, 300.0], "mean": 50.0, "std": 125.0},
            "class_to_label": [0, 1],
        }
    }
    if two_stage:
        stages["fine"] = {
            "architecture": {"name": "reduced_unet3d", "in_channels": 1, "out_channels": 3,
                             "channels": list(channels), "norm": "instance", "dropout": 0.0},
            "spacing": [1.5, 1.5, 1.5],
            "patch_size": [32, 32, 32],
            "intensity": {"clip": [-200.0, 300.0], "mean": 50.0, "std": 125.0},
            "class_to_label": [0, 1, 2],
            "margin_mm": 10.0,
        }
    return _description("tiny-random-test", stages)


def make_tiny_bundle(folder, two_stage: bool = True, seed: int = 0) -> Path:
    """Write a valid random-weight tiny bundle into ``folder`` and return its path."""
    import torch

    from LiverCTSegmentationLib.engine.bundle import save_bundle
    from LiverCTSegmentationLib.engine.networks import build_network

    desc = tiny_description(two_stage)
    torch.manual_seed(seed)
    states = {s: build_network(st["architecture"]).state_dict() for s, st in desc["stages"].items()}
    return save_bundle(Path(folder), desc, states, overwrite=True)


# Normalisation used by the threshold stages: x = HU / 100 (clip +-1000 HU).
BOX_INTENSITY = {"clip": [-1000.0, 1000.0], "mean": 0.0, "std": 100.0}


def _window_row(lo_hu: float, hi_hu: float) -> tuple[list, float]:
    """Weights ([w_x, w_x2]) and bias so that logit = r^2 - (x - m)^2 > 0 iff lo < HU < hi."""
    lo, hi = lo_hu / BOX_INTENSITY["std"], hi_hu / BOX_INTENSITY["std"]
    m, r = (lo + hi) / 2.0, (hi - lo) / 2.0
    return [2.0 * m, -1.0], r * r - m * m


def threshold_state_dict(windows_hu: list) -> dict:
    """State dict for ``threshold_net``: class 0 = background (logit 0), class c = windows_hu[c-1].

    A window of ``None`` makes that class never win.
    """
    import torch

    n = len(windows_hu) + 1
    w = torch.zeros(n, 2, 1, 1, 1)
    b = torch.zeros(n)
    for c, win in enumerate(windows_hu, start=1):
        if win is None:
            b[c] = -1e4
            continue
        (wx, wx2), bias = _window_row(*win)
        w[c, 0, 0, 0, 0], w[c, 1, 0, 0, 0], b[c] = wx, wx2, bias
    return {"head.weight": w, "head.bias": b}


def make_box_bundle(folder, liver_hu=(80.0, 200.0), tumor_hu: Optional[tuple] = None,
                    two_stage: bool = True, coarse_spacing=3.0, fine_spacing=1.5, margin_mm: float = 10.0) -> Path:
    """Write a deterministic threshold bundle.

    Coarse stage: label 1 where HU is inside ``liver_hu`` (or the hull of
    ``liver_hu`` and ``tumor_hu``). Fine stage: 1 in ``liver_hu``, 2 in
    ``tumor_hu`` (never, if None). Normalisation: HU / 100.
    """
    from LiverCTSegmentationLib.engine.bundle import save_bundle

    coarse_win = liver_hu if tumor_hu is None else (min(liver_hu[0], tumor_hu[0]), max(liver_hu[1], tumor_hu[1]))
    stages = {
        "coarse": {
            "architecture": {"name": "threshold_net", "in_channels": 1, "out_channels": 2},
            "spacing": [float(coarse_spacing)] * 3,
            "patch_size": [32, 32, 32],
            "intensity": dict(BOX_INTENSITY),
            "class_to_label": [0, 1],
        }
    }
    states = {"coarse": threshold_state_dict([coarse_win])}
    if two_stage:
        stages["fine"] = {
            "architecture": {"name": "threshold_net", "in_channels": 1, "out_channels": 3},
            "spacing": [float(fine_spacing)] * 3,
            "patch_size": [32, 32, 32],
            "intensity": dict(BOX_INTENSITY),
            "class_to_label": [0, 1, 2],
            "margin_mm": float(margin_mm),
        }
        states["fine"] = threshold_state_dict([liver_hu, tumor_hu])
    desc = _description("threshold-box-test", stages)
    return save_bundle(Path(folder), desc, states, overwrite=True)
