"""Training options that the phantom e2e run does not exercise: schedules, early stopping, bf16 autocast
on CPU, a 2D lung-style BCE run, elastic augmentation. Tiny phantoms: seconds per test."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from liverct_training import losses as L  # noqa: E402
from liverct_training import train as T  # noqa: E402
from liverct_training.config import load_config  # noqa: E402
from test_training_loop import tiny_overrides  # noqa: E402

QUIET = ["output.mlflow=false", "output.plots=false"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One phantom + stage cache for the module: generated once, reused by every run."""
    return tmp_path_factory.mktemp("cache")


def _coarse_cfg(tmp_path, cache, *extra: str) -> dict:
    ov = tiny_overrides(tmp_path / "run", cache) + ["train.stages=[coarse]", "train.epochs=1",
                                                    "train.iterations_per_epoch=2", *QUIET, *extra]
    return load_config("phantom", ov)


def _history(tmp_path, stage: str = "coarse") -> list[dict]:
    return json.loads((tmp_path / "run" / f"history_{stage}.json").read_text())


# -------------------------------------------------------------- schedules
def _lrs(t: dict, total: int, steps: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = T.build_scheduler(opt, t, total)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_cosine():
    lrs = _lrs({"schedule": "cosine", "warmup_iterations": 4}, total=14, steps=15)
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear warmup to the base lr
    assert lrs[4] == pytest.approx(1.0) and lrs[9] == pytest.approx(0.5) and lrs[14] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_poly_and_constant():
    poly = _lrs({"schedule": "poly", "poly_power": 0.9}, total=10, steps=11)
    assert poly[0] == pytest.approx(1.0) and poly[5] == pytest.approx(0.5 ** 0.9) and poly[10] == pytest.approx(0.0)
    assert _lrs({"schedule": "constant"}, total=10, steps=5) == pytest.approx([1.0] * 5)


def test_plateau_halves_lr_after_patience_without_gain():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = T.build_scheduler(opt, {"schedule": "plateau", "early_stopping_patience": 6}, 100)  # patience 6//3=2
    lrs = []
    for score in [0.5, 0.6, 0.6, 0.6, 0.6, 0.7]:
        sched.step(score)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.5, 0.5])


# --------------------------------------------------------- early stopping
def test_early_stopping_stops_at_patience(tmp_path, cache, monkeypatch):
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1, 0.0])

    def falling(model, val, st, device, info):
        s = next(scores)
        return {"val_dice_1": s, "val_dice": s}, None

    monkeypatch.setattr(T, "validate", falling)
    out = T.train(_coarse_cfg(tmp_path, cache, "train.epochs=6", "train.early_stopping_patience=2"))
    assert out["coarse"]["epochs_run"] == 3 and out["coarse"]["best_val_dice"] == 0.5
    assert [h["epoch"] for h in _history(tmp_path)] == [1, 2, 3]
    last = torch.load(tmp_path / "run" / "last_coarse.pt", weights_only=True)
    assert last["done"] and last["stopped_early"] and last["bad_epochs"] == 2


# --------------------------------------------------------------- bf16 AMP
def test_bf16_autocast_on_cpu_trains_with_finite_loss(tmp_path, cache, monkeypatch):
    assert T.autocast_dtype({"amp": "bf16", "use_bf16": True}, torch.device("cpu")) == torch.bfloat16
    assert T.autocast_dtype({"amp": "bf16"}, torch.device("cpu")) is None  # CPU needs use_bf16
    dtypes: list = []
    real = L.build_loss

    def spy(*a, **k):
        fn = real(*a, **k)

        def loss(x, y):
            dtypes.append(x.dtype)
            return fn(x, y)
        return loss

    monkeypatch.setattr(L, "build_loss", spy)
    T.train(_coarse_cfg(tmp_path, cache, "train.amp=bf16", "train.use_bf16=true"))
    assert dtypes and all(d == torch.bfloat16 for d in dtypes), dtypes  # the network really ran in bf16
    h = _history(tmp_path)
    assert all(math.isfinite(r["train_loss"]) for r in h) and 0 <= h[-1]["val_dice"] <= 1


# ------------------------------------------------------ elastic augmentation
@pytest.mark.parametrize("backend", ["monai", "torch"])
def test_elastic_augmentation_runs(tmp_path, cache, backend):
    T.train(_coarse_cfg(tmp_path, cache, "train.augmentation.elastic_prob=1.0", "train.augmentation.affine_prob=0.0",
                        f"train.augmentation.backend={backend}"))
    assert all(math.isfinite(r["train_loss"]) for r in _history(tmp_path))


def test_monai_elastic_moves_labels_and_keeps_them_discrete():
    from liverct_training.augment import build_augmentation

    fn = build_augmentation({"enabled": True, "elastic_prob": 1.0}, 3)
    img = np.random.default_rng(0).normal(size=(1, 24, 24, 24)).astype(np.float32)
    lab = np.zeros_like(img)
    lab[:, 6:18, 6:18, 6:18] = 1
    out = fn({"image": img, "label": lab}, 3)
    moved = np.asarray(out["label"])
    assert set(np.unique(moved)) <= {0.0, 1.0} and not np.array_equal(moved, lab)


# ------------------------------------------------------------ 2D lung, BCE
def test_2d_lung_style_bce_run_exports_a_lesion_bundle(tmp_path, cache):
    from LiverCTSegmentationLib.engine.bundle import ModelBundle
    from LiverCTSegmentationLib.engine.io import read_volume
    from LiverCTSegmentationLib.engine.pipeline import SegmentOptions, segment
    from liverct_training.export import export_run

    run = tmp_path / "run"
    ov = [f"output.run_dir={run}", f"data.cache_dir={cache}", "data.kind=phantom", "data.root=null",
          "data.task=lung_tumor", "data.label_mapping={0: 0, 1: 1, 2: 1}",  # phantom liver stands in for a lesion
          "data.phantom.n_train=2", "data.phantom.n_val=1", "data.phantom.n_test=1",
          "data.phantom.shape_kji=[40,64,80]", "data.phantom.spacings=[]", "data.phantom.orientations=[LPS,RAS]",
          "stages.coarse.spacing=[6,6,6]", "stages.coarse.patch_size=[1,32,32]",
          "stages.coarse.architecture.channels=[4,8,16]", "stages.coarse.intensity.clip=[-200,300]",
          "train.loss=bce", "train.epochs=1", "train.iterations_per_epoch=3", "train.batch_size=2",
          "train.num_workers=0", *QUIET]
    cfg = load_config("msd_lung_tumor", ov)
    assert cfg["stages"]["coarse"]["architecture"]["name"] == "unet2d"
    T.train(cfg)
    h = _history(tmp_path)
    assert math.isfinite(h[0]["train_loss"]) and 0 <= h[0]["val_dice"] <= 1
    bundle = ModelBundle.load(export_run(run, tmp_path / "bundle", hash_data=False))
    assert bundle.postprocess.get("lesions_only") is True
    split = json.loads((run / "split.json").read_text())
    vol = read_volume(split["cases"][split["test"][0]]["image"])
    res = segment(vol, bundle, SegmentOptions(device="cpu"))
    assert res.labelmap.same_grid(vol) and set(np.unique(res.labelmap.array)) <= {0, 1}
    assert not any("liver" in w.lower() for w in res.warnings), res.warnings
