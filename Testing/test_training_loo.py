"""Real-data training features: multi-organ labels, named splits, fine-stage cache crops,
canonical stage grids, the torch augmentation backend (deterministic on CPU) and `loo`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from LiverCTSegmentationLib.engine import io  # noqa: E402
from LiverCTSegmentationLib.synthetic.phantom import make_phantom  # noqa: E402
from liverct_training.cache import load_cached  # noqa: E402
from liverct_training.config import CONFIG_DIR, load_config  # noqa: E402
from liverct_training.datasets import DatasetError, read_dataset  # noqa: E402
from liverct_training.split import SplitError, explicit_split, load_or_create_split  # noqa: E402

CLASSES = {"1": "spleen", "2": "kidney_right", "5": "liver", "10": "lung_upper_lobe_left"}


def _write_cases(root: Path) -> list[dict]:
    """Three small phantoms as NIfTI pairs (one RAS); case 'c' has a TotalSegmentator-style map."""
    root.mkdir(parents=True, exist_ok=True)
    pairs = []
    for name, seed, orient in (("a", 11, "LPS"), ("b", 12, "RAS"), ("c", 13, "LPS")):
        ct, lab = make_phantom(seed, shape_kji=(32, 56, 64), spacing=(3.0, 3.0, 3.0), orientation=orient, fov="full")
        io.write_volume(ct, root / f"{name}_ct.nii.gz")
        entry = {"case_id": name, "image": f"{name}_ct.nii.gz", "label": f"{name}_label.nii.gz"}
        arr = np.asarray(lab.array).copy()
        if name == "c":
            multi = np.where(arr > 0, 5, 0).astype(np.uint8)          # liver (+tumour) -> 5
            body = np.asarray(ct.array) > -300
            multi[(multi == 0) & body & (np.indices(arr.shape)[2] < 12)] = 1   # a "spleen" strip
            multi[(multi == 0) & body & (np.indices(arr.shape)[0] > 28)] = 10  # "lung"
            arr = multi
            (root / "classes.json").write_text(json.dumps(CLASSES))
            entry["label_classes"] = "classes.json"
        io.write_volume(lab.with_array(arr), root / f"{name}_label.nii.gz")
        pairs.append(entry)
    return pairs


def _tiny_config(tmp: Path, data_root: Path, pairs: list[dict], **train) -> Path:
    cfg = yaml.safe_load((CONFIG_DIR / "real_liver_tumor.yaml").read_text())
    cfg["data"].update(root=str(data_root), pairs=pairs, cache_dir=str(tmp / "cache"))
    for st, sp in (("coarse", 6.0), ("fine", 3.0)):
        cfg["stages"][st].update(spacing=[sp] * 3, patch_size=[16, 16, 16])
        cfg["stages"][st]["architecture"]["channels"] = [4, 8, 16]
    cfg["train"].update(epochs=1, iterations_per_epoch=2, batch_size=2, warmup_iterations=1, num_workers=0, **train)
    cfg["output"].update(run_dir=str(tmp / "runs"), mlflow=False, plots=False)
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("realish")
    pairs = _write_cases(tmp / "data")
    return tmp, tmp / "data", pairs


def test_multi_organ_case_keeps_organ_ids_and_coarse_ignores_them(dataset, tmp_path):
    _, root, pairs = dataset
    cases = {c.case_id: c for c in read_dataset({"kind": "list", "root": str(root), "pairs": pairs})}
    assert cases["c"].label_classes.endswith("classes.json") and cases["a"].label_classes is None
    st = {"spacing": [6.0] * 3, "intensity": {"clip": [-200, 300], "mean": 50, "std": 125}}
    cached = load_cached(cases["c"], st, tmp_path, "liver_tumor")
    values = set(np.unique(cached.label).tolist())
    assert 1 in values and 3 in values and 10 not in values   # liver 1, spleen -> first negative (3)
    assert cached.meta["inputs"]["mapping"]["5"] == 1 and cached.meta["inputs"]["mapping"]["10"] == 0
    from liverct_training.sampling import label_lut

    lut = label_lut([0, 1], any_nonzero_is_foreground=True)
    assert lut[1] == lut[2] == 1 and lut[3] == 0


def test_missing_classes_file_is_a_clear_error(dataset):
    _, root, pairs = dataset
    bad = [dict(pairs[0], label_classes="nope.json")]
    with pytest.raises(DatasetError, match="label classes file"):
        read_dataset({"kind": "list", "root": str(root), "pairs": bad})


def test_fine_cache_is_cropped_to_liver_box_on_a_canonical_grid(dataset, tmp_path):
    _, root, pairs = dataset
    case = next(c for c in read_dataset({"kind": "list", "root": str(root), "pairs": pairs}) if c.case_id == "b")
    st = {"spacing": [3.0] * 3, "intensity": {"clip": [-200, 300], "mean": 50, "std": 125}}
    whole = load_cached(case, dict(st, orientation="canonical"), tmp_path, "liver_tumor")
    crop = load_cached(case, dict(st, orientation="canonical", margin_mm=6.0), tmp_path, "liver_tumor")
    np.testing.assert_allclose(whole.meta["direction"], np.eye(3), atol=1e-9)   # RAS input, LPS grid
    assert crop.image.size < whole.image.size
    (k0, _), (j0, _), (i0, _) = crop.meta["crop_kji"]
    sl = tuple(slice(lo, hi) for lo, hi in crop.meta["crop_kji"])
    np.testing.assert_array_equal(crop.label, whole.label[sl])
    # The crop's origin is the whole grid's voxel (i0, j0, k0): same physical place.
    np.testing.assert_allclose(crop.volume().origin, whole.volume().physical_points(np.array([[i0, j0, k0]]))[0])
    nz = np.argwhere(np.isin(whole.label, (1, 2)))
    expect = [[max(lo - 2, 0), min(hi + 3, n)] for lo, hi, n in zip(nz.min(0), nz.max(0), whole.label.shape)]
    assert crop.meta["crop_kji"] == expect                                  # liver box + 6 mm (2 voxels)


def test_explicit_split_and_changed_split_refused(dataset, tmp_path):
    _, root, pairs = dataset
    cases = read_dataset({"kind": "list", "root": str(root), "pairs": pairs})
    s = explicit_split(cases, test=["b"])
    assert s["test"] == ["b"] and s["train"] == ["a", "c"] and s["val"] == []
    with pytest.raises(SplitError, match="unknown cases"):
        explicit_split(cases, test=["zz"])
    with pytest.raises(SplitError, match="nothing to train"):
        explicit_split(cases, val=["a"], test=["b", "c"])
    p = tmp_path / "split.json"
    load_or_create_split(p, cases, explicit=([], ["b"]))
    assert load_or_create_split(p, cases, explicit=([], ["b"]))["test"] == ["b"]
    with pytest.raises(SplitError, match="different split"):
        load_or_create_split(p, cases, explicit=([], ["a"]))


def _train_coarse(cfg_path: Path, run: Path, seed: int) -> dict:
    from liverct_training.train import train

    cfg = load_config(str(cfg_path), [f"output.run_dir={run}", f"train.seed={seed}", "train.stages=[coarse]",
                                      "train.iterations_per_epoch=3"])
    train(cfg)
    return torch.load(run / "last_coarse.pt", weights_only=True)["model"]


def test_torch_backend_is_bit_reproducible_on_cpu(dataset, tmp_path):
    _, root, pairs = dataset
    cfg = _tiny_config(tmp_path, root, pairs)
    w1 = _train_coarse(cfg, tmp_path / "r1", 0)
    w2 = _train_coarse(cfg, tmp_path / "r2", 0)
    w3 = _train_coarse(cfg, tmp_path / "r3", 1)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert any(not torch.equal(w1[k], w3[k]) for k in w1 if w1[k].is_floating_point())


def test_loo_trains_folds_evaluates_held_out_case_and_exports_final(dataset, tmp_path):
    _, root, pairs = dataset
    cfg = _tiny_config(tmp_path, root, pairs)
    out = tmp_path / "loo"
    proc = subprocess.run([sys.executable, "-m", "liverct_training.cli", "loo", str(cfg), "--run-dir", str(out),
                           "--cases", "b", "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    split = json.loads((out / "fold-b" / "split.json").read_text())
    assert split["test"] == ["b"] and split["train"] == ["a", "c"]
    assert json.loads((out / "final" / "split.json").read_text())["train"] == ["a", "b", "c"]
    folds = json.loads((out / "loo" / "loo.json").read_text())["folds"]
    assert [f["case"] for f in folds] == ["b"] and 0.0 <= folds[0]["liver_dice"] <= 1.0
    assert "| b |" in (out / "loo" / "loo_summary.md").read_text()
    model = json.loads((out / "final" / "bundle" / "model.json").read_text())
    assert model["stages"]["coarse"]["orientation"] == "canonical"
    card = (out / "final" / "bundle" / "MODEL_CARD.md").read_text()
    assert "licence: CHAOS CC-BY-SA 4.0" in card and "Three public CTs" in card   # the config's own data text
    # the final card carries the honest estimate: the fold table and the worst held-out case's picture
    assert "Leave-one-real-case-out" in card and "| b |" in card and "Worst held-out case: b" in card
    worst = (out / "final" / "bundle" / "worst_case.png").read_bytes()
    assert worst == (out / "loo" / "b" / "overlays" / "b_compare.png").read_bytes() and worst[:4] == b"\x89PNG"
    bad = subprocess.run([sys.executable, "-m", "liverct_training.cli", "loo", str(cfg), "--run-dir", str(out),
                          "--cases", "zz", "--eval-only"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "unknown case" in (bad.stdout + bad.stderr)


def test_stage_case_trains_fine_inside_the_liver_box_and_coarse_on_the_whole_scan(dataset, tmp_path):
    from liverct_training.train import stage_case

    tmp, root, pairs = dataset
    cfg = load_config(str(_tiny_config(tmp_path, root, pairs)), [f"data.cache_dir={tmp_path / 'c'}"])
    cfg["stages"]["fine"].pop("margin_mm")      # the default margin (20 mm) still applies
    case = next(c for c in read_dataset(cfg["data"]) if c.case_id == "a")
    coarse = stage_case(case, "coarse", cfg["stages"]["coarse"], cfg)
    fine = stage_case(case, "fine", cfg["stages"]["fine"], cfg)
    whole = load_cached(case, dict(cfg["stages"]["fine"]), tmp_path / "c", "liver_tumor")
    assert whole.meta["crop_kji"] is None and coarse.target.any()
    liver = np.argwhere(np.isin(whole.label, (1, 2)))
    margin = int(np.ceil(20.0 / 3.0))
    expect = tuple(min(hi + 1 + margin, n) - max(lo - margin, 0)
                   for lo, hi, n in zip(liver.min(0), liver.max(0), whole.label.shape))
    assert fine.image.shape == expect and fine.image.size < whole.image.size
    assert fine.labels is not None and fine.labels.shape == fine.image.shape   # torch backend keeps raw ids
