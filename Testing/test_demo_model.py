"""The bundled phantom demo model (trained on phantoms by training/) and the default real-CT model
on held-out phantoms, through the full cascade."""
from __future__ import annotations

import numpy as np
import pytest

from LiverCTSegmentationLib import models
from LiverCTSegmentationLib.engine.bundle import ModelBundle
from LiverCTSegmentationLib.synthetic.phantom import make_phantom
from LiverCTSegmentationLib.engine.pipeline import SegmentOptions, segment


@pytest.fixture(scope="module")
def demo_bundle() -> ModelBundle:
    return ModelBundle.load(models.resolve_model("liverct-phantom-demo"))


@pytest.fixture(scope="module")
def default_bundle() -> ModelBundle:
    return ModelBundle.load(models.resolve_model(None))


def test_demo_model_is_labelled_two_stage_demo(demo_bundle):
    assert demo_bundle.demo is True, "the phantom model must say it is a demo"
    assert set(demo_bundle.stages) == {"coarse", "fine"}
    assert [lab["name"] for lab in demo_bundle.labels] == ["Liver", "Liver tumor"]


# Target from the engine issue. Demo 0.3.0 measured on these phantoms: 0.967 LPS (4 mm slices),
# 0.976 RAS (5 mm), 0.966 oblique (5 mm); 0.2.0 scored 0.942 on the RAS case (the heart above the dome).


def _phantom_run(bundle: ModelBundle, seed: int, orientation: str):
    """Segment a held-out phantom (seeds far from the training range 1000+; full field of view so the
    truth is a whole liver) -> (ct, result, liver Dice, truth liver mask); the result is on the CT grid."""
    ct, truth = make_phantom(seed, orientation=orientation, fov="full")
    res = segment(ct, bundle, SegmentOptions(device="cpu"))
    assert res.labelmap.same_grid(ct)
    pred, gt = res.labelmap.array > 0, truth.array > 0
    return ct, res, 2 * np.logical_and(pred, gt).sum() / (pred.sum() + gt.sum()), gt


@pytest.mark.parametrize("seed,orientation", [(70001, "LPS"), (70002, "RAS"), (70003, "oblique")])
def test_cascade_reaches_liver_dice_095_on_held_out_phantoms(demo_bundle, seed, orientation):
    ct, res, dice, gt = _phantom_run(demo_bundle, seed, orientation)
    assert dice >= 0.95, f"liver Dice {dice:.3f} ({orientation}, seed {seed})"
    assert abs(res.statistics.liver_ml - gt.sum() * ct.voxel_volume_mm3 / 1000) / res.statistics.liver_ml < 0.1


# The default model never saw a phantom: liverct 1.2.0 measured 0.915 / 0.794 / 0.925 on these
# (its card; 1.1.0: 0.909 / 0.772 / 0.920; 1.0.0: 0.887 / 0.730 / 0.902; liverct-real 0.2.0: 0.920 / 0.891 / 0.918). Seed 70002 is
# hard for all (1.0.0 as LPS: 0.673), so its bound is lower; a geometry error (RAS, oblique) would
# give ~0, not 0.77.
@pytest.mark.parametrize("seed,orientation,least", [(70001, "LPS", 0.89), (70002, "RAS", 0.77), (70003, "oblique", 0.90)])
def test_default_real_model_finds_the_phantom_liver(default_bundle, seed, orientation, least):
    assert default_bundle.demo is False
    _ct, _res, dice, _gt = _phantom_run(default_bundle, seed, orientation)
    assert dice >= least, f"liver Dice {dice:.3f} ({orientation}, seed {seed})"
