"""Label-driven CT synthesis (synthetic/anatomy_ct.py) and its training cases (training/anatomy_data.py):
deterministic for a seed, image aligned with its labels, HU per class in the configured ranges,
cases drawn once and reused, and a CPU training run that uses them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")

from LiverCTSegmentationLib.engine import io  # noqa: E402
from LiverCTSegmentationLib.engine.volume import Volume  # noqa: E402
from LiverCTSegmentationLib.synthetic.anatomy_ct import (  # noqa: E402
    TISSUES, TUMOR_HYPER, TUMOR_HYPO, SynthesisParams, class_names, synthesize_ct, synthesize_volume,
)

ANATOMY = Path(__file__).resolve().parents[2] / "shared" / "data" / "anatomy"
CLASSES = {"classes": {"0": "outside_body", "1": "liver", "2": "liver_tumor", "3": "body_unlabelled", "4": "bone",
                       "5": "portal_vein", "11": "spleen", "17": "liver_vessel"},
           "target": {"liver": [1, 17], "liver_tumor": [2]}}
NAMES = class_names(CLASSES)


def toy_anatomy(shape=(40, 64, 64), seed: int = 0) -> np.ndarray:
    """Body ellipse, a liver on the patient's right with a tumour and a vessel, spleen, spine."""
    k, j, i = np.indices(shape)
    lab = np.zeros(shape, np.uint8)
    lab[((i - 32) / 29.0) ** 2 + ((j - 32) / 24.0) ** 2 < 1] = 3
    lab[((i - 20) / 11.0) ** 2 + ((j - 30) / 10.0) ** 2 + ((k - 20) / 12.0) ** 2 < 1] = 1
    lab[((i - 44) / 5.0) ** 2 + ((j - 34) / 6.0) ** 2 + ((k - 20) / 8.0) ** 2 < 1] = 11
    lab[((i - 32) / 4.0) ** 2 + ((j - 48) / 4.0) ** 2 < 1] = 4
    lab[((i - 22) / 4.0) ** 2 + ((j - 27) / 4.0) ** 2 + ((k - 22 - seed) / 4.0) ** 2 < 1] = 2
    lab[(lab == 1) & (np.abs(j - 34) < 2) & (np.abs(k - 16) < 2)] = 17
    lab[((i - 30) / 2.0) ** 2 + ((j - 36) / 2.0) ** 2 < 1] = 5
    return lab


def piecewise_residual(image: np.ndarray, labels: np.ndarray, skip=(0, 3, 4)) -> float:
    """Variance of the image around its per-class means over the organ voxels the labels claim
    (the heterogeneous body, bone with its cortical rim and the air are left out): small when
    labels and image agree."""
    img = image.astype(np.float64)
    means = np.zeros(int(labels.max()) + 1)
    for v in np.unique(labels):
        means[v] = img[labels == v].mean()
    organs = ~np.isin(labels, skip)
    return float(((img - means[labels])[organs] ** 2).mean())


def test_same_seed_same_image_other_seed_other_image():
    lab = toy_anatomy()
    a = synthesize_ct(lab, NAMES, (1.5, 1.5, 1.5), seed=3)
    b = synthesize_ct(lab, NAMES, (1.5, 1.5, 1.5), seed=3)
    c = synthesize_ct(lab, NAMES, (1.5, 1.5, 1.5), seed=4)
    assert a.dtype == np.int16 and a.shape == lab.shape
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_follows_its_labels_and_a_flipped_or_shifted_label_does_not(seed):
    lab = toy_anatomy()
    img = synthesize_ct(lab, NAMES, (1.5, 1.5, 1.5), seed=seed)
    aligned = piecewise_residual(img, lab)
    assert piecewise_residual(img, lab[:, :, ::-1]) > 5 * aligned  # left-right flipped labels
    assert piecewise_residual(img, np.roll(lab, 3, axis=2)) > 5 * aligned  # shifted 4.5 mm
    assert piecewise_residual(img, np.roll(lab, 3, axis=0)) > 5 * aligned  # shifted along the body


@pytest.mark.parametrize("seed", range(6))
def test_hu_per_class_in_configured_ranges(seed):
    from scipy.ndimage import binary_erosion

    lab = toy_anatomy()
    params = SynthesisParams()
    img = synthesize_ct(lab, NAMES, (1.5, 1.5, 1.5), seed=seed, params=params).astype(float)
    margin = params.texture_hu[1] + 10.0  # texture and residual noise after averaging
    core = {v: binary_erosion(lab == v, iterations=1) for v in (1, 11)}
    for value, name in ((1, "liver"), (11, "spleen")):
        (lo, hi), (elo, ehi), _ = TISSUES[name]
        m = float(np.median(img[core[value]]))
        assert lo - margin <= m <= hi + ehi + margin, (name, m)
    liver = float(np.median(img[core[1]]))
    tumor = float(np.median(img[binary_erosion(lab == 2, iterations=1)]))
    assert TUMOR_HYPO[0] - margin <= tumor - liver <= TUMOR_HYPER[1] + margin
    assert abs(tumor - liver) >= 5.0  # a tumour is never drawn as liver
    assert float(np.median(img[lab == 0])) < -900  # air outside the body
    assert float(np.median(img[lab == 4])) > 150  # bone


def test_volume_resampled_to_the_grid_keeps_ct_and_labels_on_one_grid():
    anatomy = Volume(toy_anatomy(), (0.8, 0.8, 1.0), (-30.0, -20.0, 5.0), np.eye(3))
    ct, labels = synthesize_volume(anatomy, NAMES, seed=1, params=SynthesisParams(grid_mm=1.5))
    assert ct.same_grid(labels) and ct.spacing == pytest.approx((1.5, 1.5, 1.5))
    assert labels.array.dtype == np.uint8 and set(np.unique(labels.array)) <= set(np.unique(anatomy.array))
    liver_ml = float((np.isin(labels.array, [1, 17])).sum()) * 1.5 ** 3 / 1000
    ref_ml = float((np.isin(anatomy.array, [1, 17])).sum()) * 0.64 / 1000
    assert liver_ml == pytest.approx(ref_ml, rel=0.1)  # resampling kept the organ


# ---------------------------------------------------------------- training cases
def write_anatomy_root(root: Path, n: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "anatomy_classes.json").write_text(json.dumps(CLASSES))
    for s in range(n):
        io.write_volume(Volume(toy_anatomy(seed=s), (3.0, 3.0, 3.0), (0.0, 0.0, 0.0), np.eye(3)),
                        root / f"toy{s}_anatomy.nii.gz")
    return root


def test_anatomy_mapping_counts_vessels_as_liver_and_keeps_organs_as_negatives():
    from liverct_training.labels import multiorgan_mapping

    mapping, names = multiorgan_mapping(CLASSES)
    assert mapping[1] == 1 and mapping[17] == 1 and mapping[2] == 2 and mapping[0] == 0
    organ_values = {mapping[v] for v in (3, 4, 5, 11)}
    assert len(organ_values) == 4 and min(organ_values) >= 3
    assert names[mapping[11]] == "spleen"


def test_synthetic_cases_are_drawn_once_and_reused(tmp_path):
    from liverct_training.anatomy_data import case_weights, synthetic_cases
    from liverct_training.datasets import Case, DatasetError, load_case

    root = write_anatomy_root(tmp_path / "anatomy")
    spec = {"root": str(root), "variants": 2, "grid_mm": 3.0}
    cases = synthetic_cases(spec, tmp_path / "cache", seed=0)
    assert [c.case_id for c in cases] == ["synth_toy0_v0", "synth_toy0_v1", "synth_toy1_v0", "synth_toy1_v1"]
    stamps = [Path(c.image_path).stat().st_mtime_ns for c in cases]
    again = synthetic_cases(spec, tmp_path / "cache", seed=0)
    assert [Path(c.image_path).stat().st_mtime_ns for c in again] == stamps  # not drawn twice
    ct, lab = load_case(cases[0])
    assert ct.same_grid(lab) and set(np.unique(lab.array)) <= {0, 1, 2, 3, 4, 5, 6}
    assert not np.array_equal(io.read_volume(cases[0].image_path).array, io.read_volume(cases[1].image_path).array)

    real = [Case("chaos", "chaos", "x", "y")]
    w = case_weights(real + cases, 0.25)
    assert w[0] == pytest.approx(0.75) and sum(w) == pytest.approx(1.0)
    with pytest.raises(DatasetError, match="anatomy_classes.json"):
        synthetic_cases({"root": str(tmp_path / "nowhere")}, tmp_path / "cache", seed=0)


def test_training_run_uses_synthetic_cases(tmp_path):
    """A tiny CPU run of the real preset plus data.synthetic trains on both (the smoke test of the preset)."""
    import subprocess
    import sys

    import yaml
    from liverct_training.config import CONFIG_DIR
    from test_training_loo import _tiny_config, _write_cases

    pairs = _write_cases(tmp_path / "real")
    cfg_path = _tiny_config(tmp_path, tmp_path / "real", pairs)
    cfg = yaml.safe_load(cfg_path.read_text())
    preset = yaml.safe_load((CONFIG_DIR / "anatomy_liver_tumor.yaml").read_text())
    cfg["data"]["synthetic"] = dict(preset["data"]["synthetic"], root=str(write_anatomy_root(tmp_path / "anat")),
                                    grid_mm=3.0, variants=1)
    cfg_path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "liverct_training.cli", "train", str(cfg_path)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    drawn = sorted(p.name for p in (tmp_path / "cache" / "anatomy_synth").rglob("*_ct.nii.gz"))
    assert drawn == ["toy0_v0_ct.nii.gz", "toy1_v0_ct.nii.gz"]
    assert (tmp_path / "runs" / "train_summary.json").is_file()


@pytest.mark.skipif(not (ANATOMY / "anatomy_classes.json").is_file(), reason="../shared/data/anatomy absent")
def test_a_real_anatomy_map_gives_a_ct_like_image():
    names = class_names(json.loads((ANATOMY / "anatomy_classes.json").read_text()))
    anatomy = io.read_volume(ANATOMY / "ircad_p05_anatomy.nii.gz")
    ct, labels = synthesize_volume(anatomy, names, seed=0)
    liver = np.isin(labels.array, [1, 17, 18])
    assert 20 < float(ct.array[liver].mean()) < 200
    body = labels.array == 3
    fat = (ct.array[body] < -50).mean()
    assert 0.1 < fat < 0.8  # a heterogeneous body, not one flat value
    assert piecewise_residual(ct.array, labels.array) < 0.5 * piecewise_residual(ct.array, labels.array[:, :, ::-1])
