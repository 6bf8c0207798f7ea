"""Pipeline: exact input grid, physically correct labels on oblique/flipped inputs, empty result, cancel."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from bundle_fixtures import make_box_bundle, make_tiny_bundle
from LiverCTSegmentationLib.engine.bundle import ModelBundle
from LiverCTSegmentationLib.engine.errors import Cancelled, InputError
from LiverCTSegmentationLib.engine.pipeline import SegmentOptions, segment
from LiverCTSegmentationLib.engine.plausibility import REVIEW
from LiverCTSegmentationLib.engine.progress import Progress
from LiverCTSegmentationLib.engine.volume import Volume

LIVER_HU = (80.0, 200.0)


def rot(axis, deg):
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def dice(a, b):
    a, b = a > 0, b > 0
    return 2.0 * (a & b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture(scope="module")
def box_bundle(tmp_path_factory):
    return ModelBundle.load(make_box_bundle(tmp_path_factory.mktemp("box") / "b", liver_hu=LIVER_HU))


def oblique_ras_volume():
    """Anisotropic, oblique, RAS-flipped (i, j reversed) CT with an off-centre liver-HU ellipsoid."""
    shape = (40, 96, 110)  # k, j, i
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    a = np.full(shape, -100, np.int16)  # fat: outside the liver window
    body = ((i - 55) / 50.0) ** 2 + ((j - 48) / 44.0) ** 2 <= 1
    a[np.broadcast_to(body, shape)] = 30  # soft tissue, also outside
    liver = ((i - 35) / 22.0) ** 2 + ((j - 60) / 20.0) ** 2 + ((k - 18) / 11.0) ** 2 <= 1
    a[liver] = 130
    direction = rot(2, 25) @ rot(0, 10) @ np.diag([-1.0, -1.0, 1.0])
    return Volume(a, (0.9, 0.8, 2.5), (120.0, 80.0, -300.0), direction)


def test_oblique_flipped_anisotropic_volume_matches_threshold(box_bundle):
    vol = oblique_ras_volume()
    expected = (vol.array > LIVER_HU[0]) & (vol.array < LIVER_HU[1])
    res = segment(vol, box_bundle, SegmentOptions(device="cpu"))
    lab = res.labelmap
    assert lab.same_grid(vol) and lab.array.dtype == np.uint8
    # The toy liver (37 mL, on the patient's left) is implausible anatomy: only those warnings, no others.
    assert res.warnings and all(w.startswith(REVIEW) for w in res.warnings), res.warnings
    d = dice(lab.array, expected)
    assert d > 0.95, d
    # Negative control: the same labels with one axis flipped (what a sign error in the
    # geometry would produce) must fail the criterion above.
    for ax in range(3):
        assert dice(np.flip(lab.array, axis=ax), expected) < 0.95
    assert set(res.timings) >= {"preprocess", "coarse", "fine", "postprocess", "total"}
    assert res.statistics.liver_ml == pytest.approx(expected.sum() * vol.voxel_volume_mm3 / 1000, rel=0.1)
    assert res.bundle_name == "threshold-box-test"


def test_result_follows_the_grid_not_the_frame(box_bundle):
    """The threshold result is intensity-only, so in index space it must be the same for an
    identity frame and for the oblique RAS-flipped frame: any frame-dependent slip (a sign
    error in the fine box or in the paste-back) would break this."""
    vol = oblique_ras_volume()
    ident = Volume(vol.array, vol.spacing, vol.origin, np.eye(3))
    r1 = segment(vol, box_bundle, SegmentOptions(device="cpu")).labelmap.array
    r2 = segment(ident, box_bundle, SegmentOptions(device="cpu")).labelmap.array
    assert dice(r1, r2) > 0.97


def test_single_stage_fast_and_bf16_off(tmp_path):
    mb = ModelBundle.load(make_box_bundle(tmp_path / "b", liver_hu=LIVER_HU, two_stage=False))
    vol = oblique_ras_volume()
    res = segment(vol, mb, SegmentOptions(device="cpu", fast=True, bf16=False))
    expected = (vol.array > LIVER_HU[0]) & (vol.array < LIVER_HU[1])
    assert res.labelmap.same_grid(vol)
    assert dice(res.labelmap.array, expected) > 0.85  # 3 mm only: coarser boundary
    assert "fine" not in res.timings


def test_no_liver_gives_empty_result_with_warning(box_bundle):
    vol = Volume(np.full((20, 30, 30), -500, np.int16), (1.5, 1.5, 2.0))
    res = segment(vol, box_bundle, SegmentOptions(device="cpu"))
    assert res.labelmap.same_grid(vol) and not res.labelmap.array.any()
    assert any("No liver found" in w for w in res.warnings)


def test_roi_restricts_search(box_bundle):
    vol = oblique_ras_volume()
    # ROI around a corner of the image far from the ellipsoid
    corner = vol.physical_points(np.array([[100, 5, 2], [109, 15, 8]]))
    res = segment(vol, box_bundle, SegmentOptions(device="cpu", roi_lps=(corner.min(0), corner.max(0))))
    assert not res.labelmap.array.any() and res.labelmap.same_grid(vol)
    with pytest.raises(InputError, match="region of interest"):
        segment(vol, box_bundle, SegmentOptions(device="cpu", roi_lps=((1e4, 1e4, 1e4), (1e4 + 1, 1e4 + 1, 1e4 + 1))))


def test_tiny_random_bundle_plumbing(tmp_path):
    mb = ModelBundle.load(make_tiny_bundle(tmp_path / "t"))
    vol = Volume(np.random.default_rng(0).integers(-200, 300, (24, 50, 60)).astype(np.int16), (1.2, 1.2, 3.0))
    res = segment(vol, mb, SegmentOptions(device="cpu"))
    assert res.labelmap.same_grid(vol) and res.labelmap.array.dtype == np.uint8
    assert set(np.unique(res.labelmap.array)) <= {0, 1, 2}


def test_cancel_and_progress(box_bundle):
    vol = oblique_ras_volume()
    seen = []
    segment(vol, box_bundle, SegmentOptions(device="cpu"), Progress(lambda f, s: seen.append((f, s))))
    fr = [f for f, _ in seen]
    assert fr == sorted(fr) and fr[-1] == 1.0 and {"coarse", "fine"} <= {s for _, s in seen}
    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled):
        segment(vol, box_bundle, SegmentOptions(device="cpu"), Progress(None, ev))


def test_unavailable_device_message(box_bundle):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from LiverCTSegmentationLib.engine.errors import ResourceError

    with pytest.raises(ResourceError, match="cpu"):
        segment(oblique_ras_volume(), box_bundle, SegmentOptions(device="cuda"))


def test_bundle_load_does_not_import_torch(tmp_path):
    # The CLI's resume path loads the bundle but may never build a network: torch must stay unimported.
    import subprocess
    import sys

    folder = make_tiny_bundle(tmp_path / "tiny")
    code = ("import sys; from LiverCTSegmentationLib.engine.bundle import ModelBundle; "
            f"mb = ModelBundle.load({str(folder)!r}); assert mb.stages; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_single_window_and_tiled_inference_agree_on_a_clear_image(box_bundle):
    vol = Volume(np.full((30, 40, 44), -100, np.int16), (2.0, 2.0, 3.0))
    vol.array[5:25, 8:30, 6:36] = 120
    one = segment(vol, box_bundle, SegmentOptions(device="cpu"))
    tiled = segment(vol, box_bundle, SegmentOptions(device="cpu", max_window_voxels=0))
    assert one.labelmap.array.any()
    assert dice(one.labelmap.array > 0, tiled.labelmap.array > 0) > 0.99


def _window_budgets_seen(monkeypatch) -> list:
    """The ``max_window_voxels`` of every sliding-window call from now on (appended as they happen)."""
    import LiverCTSegmentationLib.engine.inference as inference

    seen: list = []
    real = inference.sliding_window_predict

    def spy(*args, **kwargs):
        seen.append(kwargs.get("max_window_voxels"))
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "sliding_window_predict", spy)
    return seen


def test_instance_norm_bundles_run_on_training_sized_windows(tmp_path, monkeypatch):
    """Instance norm normalises over the window, so a bundle using it must be tiled at its patch size;
    batch-norm / threshold bundles may use one large window (faster, same result)."""
    from LiverCTSegmentationLib.engine.networks import window_size_invariant

    arch = {"name": "reduced_unet3d", "channels": [4, 8], "norm": "instance"}
    assert not window_size_invariant(arch)
    assert window_size_invariant({**arch, "norm": "batch"}) and window_size_invariant({**arch, "norm": "none"})

    seen = _window_budgets_seen(monkeypatch)
    vol = Volume(np.random.default_rng(0).integers(-200, 300, (24, 50, 60)).astype(np.int16), (1.2, 1.2, 3.0))
    segment(vol, ModelBundle.load(make_tiny_bundle(tmp_path / "t", two_stage=False)),
            SegmentOptions(device="cpu", max_window_voxels=10**7))
    assert seen == [0]
    seen.clear()
    segment(vol, ModelBundle.load(make_box_bundle(tmp_path / "b", two_stage=False)),
            SegmentOptions(device="cpu", max_window_voxels=10**7))
    assert seen == [10**7]


# ------------------------------------------------------- lesion-only bundles (lung tumour)
LUNG_TUMOR_LABEL = {"value": 1, "name": "Lung tumor", "color": [144, 238, 144],
                    "terminology": {"category": ["SCT", "49755003", "Morphologically Altered Structure"],
                                    "type": ["SCT", "108369006", "Neoplasm"],
                                    "region": ["SCT", "39607008", "Lung"]}}


def _lesion_bundle(folder, task=None, lesions_only=None) -> ModelBundle:
    """Single-stage threshold bundle relabelled as a lung-tumour model (model.json only; weights unchanged)."""
    import json

    path = make_box_bundle(folder, liver_hu=LIVER_HU, two_stage=False, coarse_spacing=2.0)  # the test grid
    desc = json.loads((path / "model.json").read_text())
    desc["labels"] = [LUNG_TUMOR_LABEL]
    if task is not None:
        desc["training"]["task"] = task
    if lesions_only is not None:
        desc["postprocess"]["lesions_only"] = lesions_only
    (path / "model.json").write_text(json.dumps(desc))
    return ModelBundle.load(path)


def two_lesion_volume() -> Volume:
    """Lung-like background with two separate, differently sized tumour-HU spheres and one 1-voxel speck."""
    shape = (40, 60, 90)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    a = np.full(shape, -800, np.int16)
    a[((i - 25) ** 2 + (j - 30) ** 2 + (k - 20) ** 2) <= 8 ** 2] = 130  # big lesion (r 16 mm)
    a[((i - 70) ** 2 + (j - 30) ** 2 + (k - 20) ** 2) <= 5 ** 2] = 130  # smaller one, 30 mm apart
    return Volume(a, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))


def _n_components(mask: np.ndarray) -> int:
    import SimpleITK as sitk

    cc = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
    return int(sitk.GetArrayFromImage(cc).max())


@pytest.mark.parametrize("how", [{"task": "lung_tumor"}, {"lesions_only": True}])
def test_lung_tumour_bundle_keeps_every_lesion(tmp_path, how):
    mb = _lesion_bundle(tmp_path / "lung", **how)
    vol = two_lesion_volume()
    res = segment(vol, mb, SegmentOptions(device="cpu"))
    lab = res.labelmap.array
    assert res.labelmap.same_grid(vol) and set(np.unique(lab)) <= {0, 1}
    assert _n_components(lab > 0) == 2, "both lesions must survive (no largest-component rule)"
    assert dice(lab, vol.array > 0) > 0.9
    assert res.statistics.tumor_count == 2 and res.statistics.liver_ml == 0.0
    assert not any("liver" in w.lower() for w in res.warnings), res.warnings


def test_liver_bundle_still_keeps_only_the_largest_component(tmp_path):
    # Control: the same network as a liver bundle keeps one organ (what the lung bundles must not do).
    mb = _lesion_bundle(tmp_path / "liver", task="liver_tumor")
    res = segment(two_lesion_volume(), mb, SegmentOptions(device="cpu"))
    assert _n_components(res.labelmap.array > 0) == 1


def test_lung_tumour_bundle_empty_result_does_not_mention_liver(tmp_path):
    mb = _lesion_bundle(tmp_path / "lung", task="lung_tumor")
    res = segment(Volume(np.full((20, 30, 30), -800, np.int16), (2.0, 2.0, 2.0)), mb, SegmentOptions(device="cpu"))
    assert not res.labelmap.array.any()
    assert res.warnings and all("liver" not in w.lower() for w in res.warnings)
    assert any("lung tumor" in w.lower() for w in res.warnings)


def test_paste_back_slivers_are_not_lesions(tmp_path, monkeypatch):
    """A one-voxel tumour piece left by the paste-back onto the CT grid becomes liver: the lesion
    table lists the one real lesion (the LOO folds' paste-back had left 1-2 mm^3 'lesions')."""
    from LiverCTSegmentationLib.engine import preprocess

    mb = ModelBundle.load(make_box_bundle(tmp_path / "b", liver_hu=(80.0, 200.0), tumor_hu=(0.0, 50.0)))
    a = np.full((40, 60, 60), -100, np.int16)
    a[8:32, 10:50, 10:50] = 120  # liver
    a[16:24, 20:30, 20:30] = 25  # one lesion
    vol = Volume(a, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    real = preprocess.resample_labels_to_reference

    def with_sliver(*args, **kw):
        out = real(*args, **kw)
        arr = np.array(out.array)
        assert arr[20, 25, 31] == 1 and arr[20, 25, 29] == 2 and arr[20, 25, 30] == 1
        arr[20, 25, 31] = 2  # a piece beside the lesion's rim, not touching it (as a paste-back sliver)
        return out.with_array(arr)

    monkeypatch.setattr(preprocess, "resample_labels_to_reference", with_sliver)
    res = segment(vol, mb, SegmentOptions(device="cpu"))
    assert res.labelmap.array[20, 25, 31] == 1
    assert res.statistics.tumor_count == 1 and _n_components(res.labelmap.array == 2) == 1


def test_default_window_budget_is_one_plan_for_every_cpu(tmp_path, monkeypatch):
    """Float32 on the CPU (fast_unet: 140 MB live for a 160^3 window, test_memory_budget) keeps the whole
    budget bf16 uses, so a CPU without native bf16 runs a liver box as the same single window (same
    labels) as one with it; only float32 on a GPU (the torch module's activations) halves it (issue 15)."""
    import LiverCTSegmentationLib.engine.inference as inference

    full = inference.SINGLE_WINDOW_VOXELS
    assert inference.default_window_voxels(False, "cpu") == inference.default_window_voxels(True, "cpu") == full
    assert inference.default_window_voxels(True, "cuda") == full
    assert inference.default_window_voxels(False, "cuda") == full // 2
    seen = _window_budgets_seen(monkeypatch)
    vol = Volume(np.random.default_rng(0).integers(-200, 300, (24, 50, 60)).astype(np.int16), (1.2, 1.2, 3.0))
    bundle = ModelBundle.load(make_box_bundle(tmp_path / "b", two_stage=False))
    for bf16 in (False, True):
        segment(vol, bundle, SegmentOptions(device="cpu", bf16=bf16))
    assert seen == [full, full]
