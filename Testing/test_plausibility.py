"""Plausibility warnings: a result that is not a (whole) liver says so, everywhere the result goes.

Unit tests of ``engine.plausibility`` on synthetic abdomens (each check, in patient terms under
flipped and oblique headers), the coarse probability the pipeline measures, the bundled default
model on the bundled sample (no warning) and on a left-right flipped and a chest-only crop of it
(warnings), the real CTs of ../shared/data/real (skipped when absent), and the warning's way into
``_stats.json``, ``report.csv``, the console and the web panel.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from LiverCTSegmentationLib.engine.plausibility import (EDGE_FRACTION, REVIEW, measure_liver,
                                                        plausibility_warnings)
from LiverCTSegmentationLib.engine.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CT = ROOT / "LiverCTSegmentation" / "Resources" / "Samples" / "phantom_ct.nii.gz"
SHAPE = (60, 120, 140)  # k, j, i
SPACING = (2.5, 2.5, 5.0)  # i, j, k mm: 350 x 300 x 300 mm


def abdomen(liver_hu: float = 60.0, liver_scale: float = 1.0, liver_i: float = 45.0,
            direction=None) -> tuple[Volume, Volume]:
    """Air, an elliptic body (40 HU) and a ~1.7 L ellipsoid liver at array column ``liver_i``
    (identity header: small i = LPS x small = the patient's right)."""
    k, j, i = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    ct = np.full(SHAPE, -1000, np.int16)
    body = ((i - 70) / 62.0) ** 2 + ((j - 60) / 50.0) ** 2 <= 1
    ct[np.broadcast_to(body, SHAPE)] = 40
    s = liver_scale
    liver = (((i - liver_i) / (40 * s)) ** 2 + ((j - 55) / (28 * s)) ** 2 + ((k - 30) / (14 * s)) ** 2 <= 1) & body
    ct[liver] = liver_hu
    d = np.eye(3) if direction is None else np.asarray(direction, float)
    vol = Volume(ct, SPACING, (-175.0, -150.0, -150.0), d)
    return vol, vol.with_array(liver.astype(np.uint8))


def rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def review(warnings: list) -> list:
    return [w for w in warnings if w.startswith(REVIEW)]


# ------------------------------------------------------------------------ unit: each check
@pytest.mark.parametrize("direction", [None, rot_z(20)], ids=["identity", "oblique"])
def test_plausible_abdomen_has_no_warning(direction):
    ct, lab = abdomen(direction=direction)
    m = measure_liver(ct, lab)
    assert 1200 < m.volume_ml < 2500 and m.mean_hu == pytest.approx(60)
    assert m.midline_offset_mm < -30 and m.edge_fractions == {}
    assert plausibility_warnings(ct, lab, coarse_probability=0.95) == []


def test_empty_result_says_no_liver():
    ct, lab = abdomen()
    (w,) = plausibility_warnings(ct, lab.with_array(np.zeros_like(lab.array)))
    assert w.startswith(REVIEW) and "no liver found" in w


@pytest.mark.parametrize("scale, text", [(2.0, " L is outside the plausible 0.6-4.5 L"),
                                         (0.4, " mL is outside the plausible 0.6-4.5 L")])
def test_too_large_or_too_small(scale, text):
    ct, lab = abdomen(liver_scale=scale)
    warnings = plausibility_warnings(ct, lab)
    vol = [w for w in warnings if "liver volume" in w]
    assert len(vol) == 1 and text in vol[0], warnings


def test_touching_the_top_names_the_head_end_from_the_direction_matrix():
    ct, lab = abdomen()
    top = int(np.nonzero(lab.array.any(axis=(1, 2)))[0].max())
    cut_ct, cut_lab = (Volume(v.array[: top - 8].copy(), v.spacing, v.origin, v.direction) for v in (ct, lab))
    (w,) = plausibility_warnings(cut_ct, cut_lab)
    assert "cut off by the scan" in w and "head-end edge" in w and "feet-end" not in w
    # The same array with k pointing to the feet: the last slice is now the feet end.
    feet = np.diag([1.0, 1.0, -1.0])
    flipped_ct, flipped_lab = (Volume(v.array, v.spacing, v.origin, feet) for v in (cut_ct, cut_lab))
    (w,) = plausibility_warnings(flipped_ct, flipped_lab)
    assert "feet-end edge" in w and "head-end" not in w


def test_small_clip_of_the_tip_is_tolerated_but_in_plane_cut_is_not():
    ct, lab = abdomen()
    rows = np.nonzero(lab.array.any(axis=(0, 2)))[0]
    # One slice past the front-most row: a tiny cut face (< EDGE_FRACTION of the largest section).
    tip = Volume(lab.array[:, rows.min() + 1:].copy(), lab.spacing, lab.origin, lab.direction)
    tip_ct = tip.with_array(ct.array[:, rows.min() + 1:].copy())
    m = measure_liver(tip_ct, tip)
    assert 0 < m.edge_fractions["front"] < EDGE_FRACTION
    assert plausibility_warnings(tip_ct, tip) == []
    # Cut through the middle of the liver from the front: a large face on the front edge.
    mid = (rows.min() + rows.max()) // 2
    half, half_ct = (Volume(v.array[:, mid:].copy(), v.spacing, v.origin, v.direction) for v in (lab, ct))
    warnings = plausibility_warnings(half_ct, half)
    assert any("front edge" in w for w in warnings), warnings


def test_liver_on_the_left_warns_unless_the_header_says_the_data_is_mirrored():
    ct, lab = abdomen()
    mirrored = [v.with_array(v.array[:, :, ::-1].copy()) for v in (ct, lab)]
    warnings = plausibility_warnings(*mirrored)
    assert len(warnings) == 1 and "patient's left of the body's midline" in warnings[0]
    # Data mirrored AND the header's x axis reversed (RAS-style storage): the liver is on the right.
    consistent = [Volume(v.array, v.spacing, v.origin, np.diag([-1.0, 1.0, 1.0])) for v in mirrored]
    assert plausibility_warnings(*consistent) == []


def test_liver_at_the_midline_warns():
    ct, lab = abdomen(liver_i=70)
    warnings = plausibility_warnings(ct, lab)
    assert any("lies on the body's midline" in w for w in warnings), warnings


@pytest.mark.parametrize("hu", [-120.0, 1100.0], ids=["fat", "no-HU-offset"])
def test_implausible_mean_hu(hu):
    ct, lab = abdomen(liver_hu=hu)
    (w,) = plausibility_warnings(ct, lab)
    assert f"{hu:.0f} HU" in w and "Hounsfield" in w


def test_low_coarse_probability():
    ct, lab = abdomen()
    (w,) = plausibility_warnings(ct, lab, coarse_probability=0.5)
    assert "unsure" in w and "0.50" in w
    assert plausibility_warnings(ct, lab, coarse_probability=0.9) == []


# ---------------------------------------------------------------- the probability the pipeline uses
def test_sliding_window_reports_the_foreground_probability_single_and_tiled():
    torch = pytest.importorskip("torch")
    from LiverCTSegmentationLib.engine.inference import sliding_window_predict

    class Soft(torch.nn.Module):  # logits (0, x, 0): P(not background) = 1 - 1 / (2 + e^x)
        def forward(self, x):
            return torch.cat([torch.zeros_like(x), x, torch.zeros_like(x)], 1)

    x = np.random.default_rng(0).normal(0, 2, (20, 24, 28)).astype(np.float32)
    want = 1 - 1 / (2 + np.exp(x))
    for kw in ({"max_window_voxels": 10**6}, {"overlap": 0.5}):
        got: list = []
        sliding_window_predict(Soft(), x, (16, 16, 16), 3, foreground_out=got, **kw)
        assert len(got) == 1 and got[0].shape == x.shape
        np.testing.assert_allclose(got[0], want, atol=1e-5)


# ---------------------------------------------------------------- the bundled model, end to end
@pytest.fixture(scope="module")
def default_bundle():
    from LiverCTSegmentationLib import models
    from LiverCTSegmentationLib.engine.bundle import ModelBundle

    return ModelBundle.load(models.resolve_model(None))


@pytest.fixture(scope="module")
def sample():
    from LiverCTSegmentationLib.engine import io

    if not SAMPLE_CT.is_file():
        pytest.skip(f"bundled sample CT missing: {SAMPLE_CT}")
    return io.read_volume(SAMPLE_CT)


def _segment(vol, bundle):
    from LiverCTSegmentationLib.engine.pipeline import SegmentOptions, segment

    return segment(vol, bundle, SegmentOptions(device="cpu"))


def test_default_model_on_the_sample_has_no_warning_and_a_confident_liver(sample, default_bundle, monkeypatch):
    from LiverCTSegmentationLib.engine import plausibility

    seen = []
    real = plausibility.plausibility_warnings
    monkeypatch.setattr(plausibility, "plausibility_warnings",
                        lambda v, l, p=None, **kw: seen.append(p) or real(v, l, p, **kw))
    res = _segment(sample, default_bundle)
    assert res.warnings == []
    assert len(seen) == 1 and 0.9 < seen[0] <= 1.0  # the coarse pass's mean liver probability reached the check


def test_default_model_on_the_sample_flipped_left_right_in_data_only(sample, default_bundle):
    # A left-sided liver is not what the model learnt (no left-right flips in training): it labels the
    # mirrored liver on the left (the midline warning) or hardly at all (the volume warning); never silence.
    res = _segment(sample.with_array(sample.array[:, :, ::-1].copy()), default_bundle)
    assert any("patient's left of the body's midline" in w or "outside the plausible" in w
               for w in review(res.warnings)), res.warnings


def test_default_model_on_a_chest_only_crop_above_the_liver(sample, default_bundle):
    # The sample's top 10 slices: above the liver's dome but for its tip (a chest-only field of view).
    k0 = sample.array.shape[0] - 10
    origin = tuple(sample.physical_points(np.array([[0.0, 0.0, k0]]))[0])
    res = _segment(Volume(sample.array[k0:].copy(), sample.spacing, origin, sample.direction), default_bundle)
    warnings = review(res.warnings)
    assert res.statistics.liver_ml > 0  # the network still finds "a liver" here...
    assert any("liver volume" in w for w in warnings), res.warnings  # ...and it now says it is not one
    assert len(warnings) >= 2


def test_unsure_network_warns_through_the_pipeline(tmp_path):
    # The threshold "network" of the pipeline tests gives its liver a mean probability of ~0.6.
    from bundle_fixtures import make_box_bundle
    from LiverCTSegmentationLib.engine.bundle import ModelBundle

    bundle = ModelBundle.load(make_box_bundle(tmp_path / "b", liver_hu=(50.0, 80.0)))
    ct, _ = abdomen()
    res = _segment(ct, bundle)
    assert any("unsure this is a liver" in w for w in res.warnings), res.warnings


# ------------------------------------------------------------------------------- real CTs
REAL = {  # case -> the edge(s) its liver is cut at (README: crop / field of view), or none
    "chaos_evalsample_ct": set(),
    "lits_117crop_ct": {"right-side"},  # a 128 mm cube cropped around the liver
    "totalseg_example_ct": {"head-end"},  # README: liver top cut off by the field of view
    "totalseg_example_sm_ct": {"head-end"},  # 30 slices of the same
}


@pytest.mark.parametrize("case", sorted(REAL))
def test_real_cts_warn_only_where_the_scan_cuts_the_liver(real_data_dir, default_bundle, case):
    from LiverCTSegmentationLib.engine import io

    path = real_data_dir / f"{case}.nii.gz"
    if not path.is_file():
        pytest.skip(f"real data not present: {path}")
    res = _segment(io.read_volume(path), default_bundle)
    warnings = review(res.warnings)
    edges = REAL[case]
    if not edges:
        assert warnings == []
        return
    (w,) = warnings  # no volume, side, HU or probability warning: only the cut
    assert "cut off by the scan" in w and all(f"{e} edge" in w for e in edges), w


# ------------------------------------------------------------ console, _stats.json, report.csv
def _flipped_case(folder: Path) -> Path:
    from test_batch import make_ct

    from LiverCTSegmentationLib.engine import io

    ct, _ = make_ct(0)
    path = folder / "flipped.nii.gz"
    folder.mkdir(parents=True, exist_ok=True)
    io.write_volume(ct.with_array(ct.array[:, :, ::-1].copy()), path, overwrite=True)
    return path


def test_warning_reaches_console_stats_json_and_report_csv(tmp_path):
    from test_batch import box_bundle
    from test_cli import liverseg

    case = _flipped_case(tmp_path / "in")
    model = box_bundle(tmp_path / "model")
    out = tmp_path / "out"
    p = liverseg(case, "-o", out, "--model", model, "--device", "cpu", "--no-overlay")
    assert p.returncode == 0, p.stderr
    side = "patient's left of the body's midline"
    assert side in p.stdout + p.stderr
    stats = json.loads((out / "flipped" / "flipped_stats.json").read_text(encoding="utf-8"))
    assert any(side in w for w in stats["warnings"]), stats["warnings"]
    with open(out / "report.csv", newline="", encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    assert side in row["warnings"]


def test_web_stats_panel_lists_the_warnings_of_the_open_ct():
    from LiverCTSegmentationLib.web.stats_panel import empty_stats, stats_view

    ct, lab = abdomen()
    assert stats_view(lab, ct=ct)["warnings"] == []
    mirrored = [v.with_array(v.array[:, :, ::-1].copy()) for v in (ct, lab)]
    view = stats_view(mirrored[1], ct=mirrored[0])
    assert len(view["warnings"]) == 1 and "patient's left" in view["warnings"][0]
    assert stats_view(lab)["warnings"] == [] and empty_stats()["warnings"] == []



def test_web_app_shows_the_warnings_after_a_run(tmp_path):
    import asyncio

    from test_web_app import _need_trame_slicer, app_mod

    _need_trame_slicer()
    from bundle_fixtures import make_box_bundle
    from trame.app import get_server

    from LiverCTSegmentationLib.engine import io

    ct, _ = abdomen()
    io.write_volume(ct.with_array(ct.array[:, :, ::-1].copy()), tmp_path / "mirrored.nii.gz")  # liver on the left
    bundle = make_box_bundle(tmp_path / "bundle", liver_hu=(50.0, 80.0), two_stage=False)
    web = app_mod.LiverWebApp(get_server("liverseg-plausibility", client_type="vue3"), data_dir=tmp_path,
                              model=str(bundle), device="cpu")
    try:
        web.state.lw_selected = "mirrored.nii.gz"
        web.server.controller.lw_open()
        assert web.state.lw_ct_name == "mirrored.nii.gz" and web.state.lw_stats["warnings"] == []
        asyncio.run(web.run_segmentation())
        assert not web.state.lw_error
        assert any("patient's left" in w for w in web.state.lw_stats["warnings"]), web.state.lw_stats
    finally:
        web.uploads.cleanup()
