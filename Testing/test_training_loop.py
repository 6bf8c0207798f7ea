"""Training loop pieces (config, sampling, augmentation, CLI) and an end-to-end phantom run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("yaml")

from liverct_training import cli  # noqa: E402
from liverct_training.config import ConfigError, load_config  # noqa: E402
from liverct_training.sampling import PatchDataset, StageCase, crop_with_pad, label_lut, sample_patch  # noqa: E402

PRESETS = ["phantom", "lits_msd_liver_tumor", "msd_lung_tumor", "ircadb_chaos_liver"]


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_take_overrides(preset):
    cfg = load_config(preset, ["train.epochs=2", "train.lr=0.01", "data.root=/elsewhere", "output.mlflow=false"])
    assert cfg["train"]["epochs"] == 2 and cfg["train"]["lr"] == 0.01
    assert cfg["data"]["root"] == "/elsewhere" and cfg["output"]["mlflow"] is False
    assert "coarse" in cfg["stages"]
    for st in cfg["stages"].values():
        assert len(st["patch_size"]) == 3 and len(st["spacing"]) == 3


def test_lung_preset_is_2d_and_loss_selectable():
    cfg = load_config("msd_lung_tumor")
    assert cfg["stages"]["coarse"]["architecture"]["name"] == "unet2d"
    assert cfg["train"]["loss"] == "bce" and cfg["train"]["fg_oversample"] == 0.5
    assert load_config("msd_lung_tumor", ["train.loss=dice"])["train"]["loss"] == "dice"


def test_config_errors_are_actionable(tmp_path):
    with pytest.raises(ConfigError, match="presets: .*phantom"):
        load_config("no_such_preset")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("phantom", ["train.epochs"])
    with pytest.raises(ConfigError, match="train.loss"):
        load_config("phantom", ["train.loss=hinge"])
    with pytest.raises(ConfigError, match="data.root"):
        load_config("lits_msd_liver_tumor", ["data.root=null"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: {}\n")
    with pytest.raises(ConfigError, match="no stages"):
        load_config(bad)


# ---------------------------------------------------------------- sampling
def _toy_case(shape=(40, 40, 40)) -> StageCase:
    img = np.random.default_rng(0).normal(size=shape).astype(np.float16)
    tgt = np.zeros(shape, np.uint8)
    tgt[10:20, 10:20, 10:20] = 1
    tgt[30:32, 30:32, 30:32] = 2
    return StageCase.build("toy", img, tgt, (1.0, 1.0, 1.0), tumor_class=2)


def test_crop_with_pad_and_label_lut():
    a = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    out = crop_with_pad(a, (-1, 1, 2), (3, 3, 3), -5.0)
    assert out.shape == (3, 3, 3) and (out[0] == -5).all() and out[1, 0, 0] == a[0, 1, 2]
    assert list(label_lut([0, 1, 2], False)[:3]) == [0, 1, 2]
    assert list(label_lut([0, 1], True)[:3]) == [0, 1, 1]  # coarse: tumour counts as liver region


def test_oversampling_hits_tumour_and_foreground():
    case = _toy_case()
    rng = np.random.default_rng(1)
    tum = [sample_patch(case, (8, 8, 8), rng, 0.0, 1.0)[1] for _ in range(20)]
    assert all((t == 2).any() for t in tum)
    fg = [sample_patch(case, (8, 8, 8), rng, 1.0, 0.0)[1] for _ in range(20)]
    assert all((t > 0).any() for t in fg)
    bg = [sample_patch(case, (8, 8, 8), rng, 0.0, 0.0)[1] for _ in range(50)]
    assert sum((t == 2).any() for t in bg) < 10
    img2d, tgt2d = sample_patch(case, (16, 16), rng, 0.0, 1.0)
    assert img2d.shape == (16, 16) and (tgt2d == 2).any()


def test_patch_dataset_is_reproducible_across_workers():
    case = _toy_case()
    ds = PatchDataset([case], (16, 16, 16), 6, seed=3, fg_prob=0.5, tumor_prob=0.2)
    ds.set_epoch(1)
    a = [torch.cat([x.flatten(), y.flatten().float()]) for x, y in torch.utils.data.DataLoader(ds, batch_size=2)]
    b = [torch.cat([x.flatten(), y.flatten().float()])
         for x, y in torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    ds.set_epoch(2)
    c = [x for x, _ in torch.utils.data.DataLoader(ds, batch_size=2)]
    assert not torch.equal(c[0], a[0][: c[0].numel()].reshape(c[0].shape))


# ------------------------------------------------------------ augmentation
def test_augmentation_flips_exclude_left_right_by_default():
    pytest.importorskip("monai")
    from liverct_training.augment import build_augmentation
    from liverct_training.config import DEFAULTS

    img = np.random.default_rng(0).normal(size=(1, 8, 9, 10)).astype(np.float32)
    sample = {"image": img, "label": (img > 0).astype(np.float32)}
    only_flips = {"enabled": True, "flip_axes": DEFAULTS["train"]["augmentation"]["flip_axes"], "flip_prob": 1.0}
    out = build_augmentation(only_flips, 3)(dict(sample), 0)
    assert np.array_equal(np.asarray(out["image"]), img[:, ::-1, ::-1, :])  # k and j flipped, i (L-R) kept
    lr = build_augmentation({"enabled": True, "flip_axes": [2], "flip_prob": 1.0}, 3)(dict(sample), 0)
    assert np.array_equal(np.asarray(lr["image"]), img[:, :, :, ::-1])


def test_augmentation_is_seeded_and_keeps_labels_discrete():
    pytest.importorskip("monai")
    from liverct_training.augment import build_augmentation
    from liverct_training.config import DEFAULTS

    aug = dict(DEFAULTS["train"]["augmentation"], affine_prob=1.0, elastic_prob=0.0, noise_prob=1.0)
    fn = build_augmentation(aug, 3)
    img = np.random.default_rng(0).normal(size=(1, 16, 16, 16)).astype(np.float32)
    lab = np.zeros_like(img)
    lab[:, 4:12, 4:12, 4:12] = 2
    a, b = fn({"image": img, "label": lab}, 7), fn({"image": img, "label": lab}, 7)
    c = fn({"image": img, "label": lab}, 8)
    assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    assert not np.array_equal(np.asarray(a["image"]), np.asarray(c["image"]))
    assert set(np.unique(np.asarray(a["label"]))) <= {0.0, 2.0}
    assert np.asarray(a["image"]).shape == img.shape


# ---------------------------------------------------------------------- cli
def test_cli_usage_and_unknown_command(capsys):
    assert cli.main([]) == 0
    assert "train" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["train", "no_such_preset"]) == 1
    assert "not found" in capsys.readouterr().err


# --------------------------------------------------------------- end to end
def tiny_overrides(run_dir: Path, cache_dir: Path, seed: int = 0) -> list[str]:
    """The phantom preset shrunk to seconds: 2 small phantoms, 32^3 patches, tiny networks, coarse grids."""
    return [
        f"output.run_dir={run_dir}", f"data.cache_dir={cache_dir}", f"train.seed={seed}",
        "train.epochs=2", "train.iterations_per_epoch=5", "train.batch_size=2", "train.warmup_iterations=2",
        "data.phantom.n_train=2", "data.phantom.n_val=1", "data.phantom.n_test=1",
        "data.phantom.shape_kji=[40,64,80]", "data.phantom.spacings=[]", "data.phantom.orientations=[LPS,RAS]",
        "stages.coarse.spacing=[6,6,6]", "stages.fine.spacing=[3,3,3]",
        "stages.coarse.patch_size=[32,32,32]", "stages.fine.patch_size=[32,32,32]",
        "stages.coarse.architecture.channels=[4,8,16]", "stages.fine.architecture.channels=[4,8,16]",
    ]


def _png(p: Path) -> bool:
    return p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_phantom_preset_trains_resumes_exports_and_segments(tmp_path):
    pytest.importorskip("monai")
    pytest.importorskip("mlflow")
    from LiverCTSegmentationLib.engine import io, pipeline
    from LiverCTSegmentationLib.engine.bundle import ModelBundle
    from LiverCTSegmentationLib.engine.networks import build_network

    run, cache = tmp_path / "run", tmp_path / "cache"
    ov = tiny_overrides(run, cache)
    assert cli.main(["train", "phantom", *ov]) == 0
    cfg = load_config(run / "config.yaml")
    for stage in ("coarse", "fine"):
        best = torch.load(run / f"best_{stage}.pt", weights_only=True)
        ref = build_network(cfg["stages"][stage]["architecture"]).state_dict()
        assert set(best) == set(ref) and all(best[k].shape == ref[k].shape for k in ref)
        last = torch.load(run / f"last_{stage}.pt", weights_only=True)
        assert {"model", "optimizer", "scheduler", "rng", "epoch"} <= set(last) and last["epoch"] == 1
        hist = json.loads((run / f"history_{stage}.json").read_text())
        assert [h["epoch"] for h in hist] == [1, 2]
        assert all(np.isfinite(h["train_loss"]) and 0 <= h["val_dice"] <= 1 for h in hist)
        assert _png(run / "plots" / f"curves_{stage}.png") and _png(run / "plots" / f"overlay_{stage}.png")
    assert "val_dice_2" in hist[0]  # fine stage reports tumour Dice separately
    # every class's mean probability on its own voxels, per epoch, and the verdict in the summary
    assert all(0.0 <= h[f"soft_recall_{c}"] <= 1.0 for h in hist for c in (0, 1))
    summary = json.loads((run / "train_summary.json").read_text())["fine"]
    assert set(summary["soft_recall"]) >= {"0", "1"} and isinstance(summary["unlearned_classes"], list)
    metric_files = list((run / "mlruns").glob("*/*/metrics/coarse.train_loss"))
    assert metric_files and len(metric_files[0].read_text().strip().splitlines()) == 2
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 2 and len(split["val"]) == 1 and len(split["test"]) == 1

    # Resume: one more epoch continues from the checkpoint (history kept, epoch 3 appended).
    before = json.loads((run / "history_coarse.json").read_text())
    assert cli.main(["train", "phantom", *ov, "train.epochs=3", "--resume", "--stages", "coarse"]) == 0
    after = json.loads((run / "history_coarse.json").read_text())
    assert [h["epoch"] for h in after] == [1, 2, 3] and after[:2] == before

    # Export with F1's exporter, then run the module's exact inference on a held-out phantom.
    export = pytest.importorskip("liverct_training.export")
    assert export.main_export(["--run", str(run), "--out", str(tmp_path / "bundle")]) == 0
    mb = ModelBundle.load(tmp_path / "bundle")
    assert set(mb.stages) == {"coarse", "fine"}
    case = split["cases"][split["test"][0]]
    vol = io.read_volume(case["image"])
    res = pipeline.segment(vol, mb, pipeline.SegmentOptions(device="cpu"))
    assert res.labelmap.same_grid(vol) and set(np.unique(res.labelmap.array)) <= {0, 1, 2}
