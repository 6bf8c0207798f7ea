"""Probability and uncertainty maps (--probabilities, --uncertainty): from the same pass as the
labels, on the input's exact grid, aligned with the labels; TTA variants undone exactly; the
confidence score falls when the result is fragile."""
from __future__ import annotations

import numpy as np
import pytest

from LiverCTSegmentationLib.engine.uncertainty import VARIANTS, Variant, dice, normalised_entropy, shift, summarise


def test_shift_moves_without_wrapping_and_variants_undo_exactly():
    a = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    s = shift(a, (0, 1, -2), -9.0)
    assert s[0, 1, 0] == a[0, 0, 2] and (s[:, 0, :] == -9).all() and (s[:, :, -2:] == -9).all()
    probs = np.random.default_rng(0).dirichlet([1, 1, 1], size=(14, 16, 15)).transpose(3, 0, 1, 2).astype(np.float32)
    for v in VARIANTS:
        moved = np.stack([shift(p, v.shift_kji, 0.0) for p in probs])
        back = v.undo(moved)
        inner = tuple(slice(6, -6) for _ in range(3))
        assert np.array_equal(back[(slice(None),) + inner], probs[(slice(None),) + inner])
        edge = back[:, 0, 0, 0] if v.shift_kji[0] > 0 else back[:, -1, -1, -1]
        assert edge.sum() == pytest.approx(1.0)  # vacated voxels are background, still a distribution


def test_intensity_jitter_is_applied():
    x = np.ones((4, 4, 4), np.float32)
    assert Variant((0, 0, 0), 1.1, 0.2).apply(x, 0.0)[2, 2, 2] == pytest.approx(1.3)


def test_entropy_and_confidence():
    certain = np.zeros((3, 4, 4, 4), np.float32)
    certain[1] = 1
    assert normalised_entropy(certain).max() < 1e-3
    assert normalised_entropy(np.full((3, 2, 2, 2), 1 / 3, np.float32)).min() == pytest.approx(1.0, abs=1e-4)
    same = summarise([certain] * 5)
    assert same.confidence == 1.0
    other = certain.copy()
    other[1, :2], other[0, :2] = 0, 1  # half the organ gone in every variant
    fragile = summarise([certain] + [other] * 4)
    assert fragile.confidence == pytest.approx(2 * 32 / (64 + 32))  # Dice of the whole organ vs its half
    assert fragile.uncertainty[:2].min() > fragile.uncertainty[2:].max()


@pytest.fixture(scope="module")
def sample_run():
    from LiverCTSegmentationLib import models
    from LiverCTSegmentationLib.engine import io, pipeline
    from LiverCTSegmentationLib.engine.bundle import ModelBundle
    from LiverCTSegmentationLib.resource_paths import resources_dir

    ct = resources_dir() / "Samples" / "phantom_ct.nii.gz"
    if not ct.is_file():
        pytest.skip("bundled sample CT missing")
    vol = io.read_volume(ct)
    bundle = ModelBundle.load(models.default_bundle_dir())
    plain = pipeline.segment(vol, bundle, pipeline.SegmentOptions(device="cpu"))
    full = pipeline.segment(vol, bundle, pipeline.SegmentOptions(device="cpu", probabilities=True, uncertainty=True))
    return vol, plain, full


def test_maps_on_the_input_grid_from_the_same_labels(sample_run):
    vol, plain, full = sample_run
    assert np.array_equal(full.labelmap.array, plain.labelmap.array)  # extra passes never change the labels
    assert not plain.maps and plain.confidence is None
    assert set(full.maps) == {"liver_probability", "tumor_probability", "uncertainty"}
    for m in full.maps.values():
        assert m.same_grid(vol) and m.array.dtype == np.uint8
    liver = full.labelmap.array > 0
    p = full.maps["liver_probability"].array > 127
    assert dice(p, liver) > 0.97  # the probability map is the labels' own evidence
    assert dice(p, np.roll(liver, 3, axis=2)) < dice(p, liver) - 0.02  # and aligned with them
    tumor = full.labelmap.array == 2
    if tumor.any():
        assert full.maps["tumor_probability"].array[tumor].mean() > 127


def test_uncertainty_is_high_at_the_boundary_and_confidence_is_reported(sample_run):
    from scipy.ndimage import binary_erosion

    _vol, _plain, full = sample_run
    liver = full.labelmap.array > 0
    u = full.maps["uncertainty"].array.astype(float)
    edge = liver & ~binary_erosion(liver, iterations=1)
    assert u[edge].mean() > 3 * u[binary_erosion(liver, iterations=3)].mean()
    assert u[edge].mean() > 3 * u[~liver].mean()
    assert 0.9 < full.confidence <= 1.0


def test_cli_writes_the_maps_and_the_confidence_column(tmp_path):
    """liverseg --probabilities --uncertainty: three more files per case, the score in the stats and the report."""
    import csv
    import json

    from LiverCTSegmentationLib.batch import cli
    from LiverCTSegmentationLib.engine import io
    from test_batch import box_bundle, need_engine, write_case

    need_engine()
    data = tmp_path / "data"
    data.mkdir()
    write_case(data / "alpha.nii.gz", 1)
    bundle = box_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    args = [str(data), "-o", str(out), "--model", str(bundle), "--device", "cpu", "--no-overlay", "--quiet"]
    assert cli.main(args) == 0
    assert not (out / "alpha" / "alpha_uncertainty.nii.gz").exists()  # off by default
    assert cli.main(args + ["--probabilities", "--uncertainty"]) == 0  # options changed: redone, not skipped
    case = out / "alpha"
    ct = io.read_volume(data / "alpha.nii.gz")
    for name in ("alpha_liver_prob.nii.gz", "alpha_uncertainty.nii.gz"):
        m = io.read_volume(case / name)
        assert m.same_grid(ct, atol=1e-3) and m.array.dtype == np.uint8
    assert not (case / "alpha_tumor_prob.nii.gz").exists()  # the box model has no tumour class
    stats = json.loads((case / "alpha_stats.json").read_text())
    assert 0.0 <= stats["statistics"]["confidence"] <= 1.0
    with open(out / "report.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["confidence"]) == pytest.approx(stats["statistics"]["confidence"], abs=1e-3)
    assert row["uncertainty_path"].endswith("alpha_uncertainty.nii.gz")
    assert cli.main(args + ["--probabilities", "--uncertainty"]) == 0
    with open(out / "report.csv", newline="") as f:
        assert next(csv.DictReader(f))["status"] == "skipped"


def test_maps_of_a_coarse_only_model_inside_a_roi_sit_on_the_roi(tmp_path):
    """The last stage's region starts at the ROI's first voxel, not at the image's: the maps follow."""
    from LiverCTSegmentationLib.engine import pipeline
    from LiverCTSegmentationLib.engine.bundle import ModelBundle
    from test_batch import box_bundle, make_ct, need_engine

    need_engine()
    ct, _ = make_ct(1)
    bundle = ModelBundle.load(box_bundle(tmp_path / "bundle"))
    corner = ct.physical_points(np.array([[6.0, 4.0, 3.0]]))[0]
    far = ct.physical_points(np.array([[ct.size_ijk[0] - 2.0, ct.size_ijk[1] - 3.0, ct.size_ijk[2] - 2.0]]))[0]
    roi = (tuple(np.minimum(corner, far)), tuple(np.maximum(corner, far)))
    res = pipeline.segment(ct, bundle, pipeline.SegmentOptions(device="cpu", roi_lps=roi, probabilities=True))
    liver = res.labelmap.array > 0
    assert liver.any()
    p = res.maps["liver_probability"].array > 127
    # 6 mm box model: 0.92 measured with or without the ROI; shifted by the ROI's offset, 0.49
    assert dice(p, liver) > 0.85
    assert dice(np.roll(p, (3, 4, 6), axis=(0, 1, 2)), liver) < dice(p, liver) - 0.3
    assert not p[:3].any() and not p[:, :4].any() and not p[:, :, :6].any()  # nothing before the ROI
