"""The torch resampler (used on GPUs) against SimpleITK's, which the CPU path and training use."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from LiverCTSegmentationLib import models
from LiverCTSegmentationLib.engine import pipeline, preprocess, stage_pass
from LiverCTSegmentationLib.engine.bundle import ModelBundle
from LiverCTSegmentationLib.synthetic.phantom import make_phantom
from LiverCTSegmentationLib.engine.pipeline import SegmentOptions, segment
from LiverCTSegmentationLib.engine.resample_torch import resample_linear
from LiverCTSegmentationLib.engine.volume import Volume

CPU = torch.device("cpu")


def _random_case(rng: np.random.Generator, trial: int):
    shape = tuple(int(x) for x in rng.integers(1, 30, 3))
    arr = (rng.normal(size=shape) * 300).astype(np.int16)
    d = Rotation.random(random_state=trial).as_matrix() if trial % 2 else np.diag(rng.choice([-1.0, 1.0], 3))
    src = Volume(arr, tuple(rng.uniform(0.5, 3, 3)), tuple(rng.uniform(-50, 50, 3)), d)
    d_out = Rotation.random(random_state=100 + trial).as_matrix() if trial % 3 == 0 else d
    size = tuple(int(x) for x in rng.integers(1, 25, 3))
    origin = tuple(np.asarray(src.origin) + rng.uniform(-10, 10, 3))  # partly outside: default values too
    return src, size, tuple(rng.uniform(0.5, 4, 3)), origin, d_out


def test_linear_matches_itk_on_random_oblique_grids():
    rng = np.random.default_rng(0)
    outside_seen = inside_seen = 0
    for trial in range(40):
        src, size, sp, origin, d_out = _random_case(rng, trial)
        want = preprocess._resample_onto(src, size, sp, origin, d_out, "linear", -1234.0)
        got = resample_linear(torch.from_numpy(src.array), src, size, sp, origin, d_out, -1234.0).numpy()
        assert got.shape == want.shape and got.dtype == np.float32
        # The same voxels fall outside the source (ITK's half-voxel border rule) ...
        np.testing.assert_array_equal(got == -1234.0, want == -1234.0, err_msg=f"trial {trial}")
        # ... and inside, values agree to float32 rounding (HU values of +-1000).
        np.testing.assert_allclose(got, want, atol=5e-3, rtol=0, err_msg=f"trial {trial}")
        outside_seen += int((want == -1234.0).sum())
        inside_seen += int((want != -1234.0).sum())
    assert outside_seen > 1000 and inside_seen > 1000  # both branches were exercised


def test_a_geometry_error_would_be_caught():
    # Negative control: a half-voxel shift of the target grid must break the agreement above.
    rng = np.random.default_rng(5)
    src = Volume(rng.normal(size=(20, 22, 24)).astype(np.float32) * 100, (1.0, 1.2, 2.0), (3.0, -4.0, 5.0),
                 np.eye(3))
    want = preprocess._resample_onto(src, (10, 10, 8), (2.0, 2.0, 3.0), (5.0, -2.0, 9.0), np.eye(3), "linear", 0.0)
    got = resample_linear(torch.from_numpy(src.array), src, (10, 10, 8), (2.0, 2.0, 3.0), (5.5, -2.0, 9.0),
                          np.eye(3), 0.0).numpy()
    assert np.abs(got - want).max() > 1.0


@pytest.mark.parametrize("orientation", ["native", "canonical"])
def test_stage_input_matches_itk(orientation):
    ct, _ = make_phantom(70002, orientation="RAS", fov="full")
    stage = type("Stage", (), {"spacing": (3.0, 3.0, 3.0), "orientation": orientation,
                               "intensity": {"clip": [-200.0, 300.0], "mean": 60.0, "std": 80.0}})()
    grid_itk, x_itk = stage_pass.stage_array(ct, stage)
    grid_t, x_t = stage_pass.stage_array(ct, stage, CPU)
    assert grid_t.same_grid(grid_itk, atol=1e-9)
    np.testing.assert_allclose(x_t, x_itk, atol=1e-3)  # normalised units: 0.08 HU


def test_smooth_paste_back_matches_itk():
    arr = np.zeros((30, 34, 38), np.uint8)
    k, j, i = np.ogrid[:30, :34, :38]
    arr[((i - 18) / 12.0) ** 2 + ((j - 16) / 10.0) ** 2 + ((k - 15) / 9.0) ** 2 <= 1] = 1
    arr[((i - 20) / 4.0) ** 2 + ((j - 15) / 3.0) ** 2 + ((k - 14) / 3.0) ** 2 <= 1] = 2
    direction = Rotation.from_euler("zyx", [15, -5, 8], degrees=True).as_matrix() @ np.diag([-1.0, -1.0, 1.0])
    label = Volume(arr, (1.5, 1.5, 1.5), (10.0, 20.0, -30.0), direction)
    origin = np.asarray(label.origin) - direction @ np.array([6.0, 6.0, 6.0])  # covers the label grid
    reference = Volume(np.zeros((60, 80, 90), np.int16), (0.8, 0.8, 1.2), tuple(origin), direction)
    want = preprocess.resample_labels_to_reference(label, reference, smooth=True)
    got = preprocess.resample_labels_to_reference(label, reference, smooth=True, device=CPU)
    assert got.same_grid(reference)
    assert (want.array == 2).sum() > 500 and (want.array == 1).sum() > 10000
    # Only voxels whose interpolated value sits on the 0.5 cut (float rounding) may differ.
    assert int((got.array != want.array).sum()) <= 0.0005 * int((want.array > 0).sum())


def test_segment_with_torch_resampling_equals_itk_resampling():
    """Same result quality either way: the inputs differ by float rounding only, which can move the
    coarse liver box by a voxel and so the fine grid (measured: 0.22 % of liver voxels differ,
    liver Dice against the truth 0.9663 with ITK, 0.9674 with torch)."""
    bundle = ModelBundle.load(models.resolve_model("liverct-phantom-demo"))
    ct, truth = make_phantom(70003, orientation="oblique", fov="full")
    itk = segment(ct, bundle, SegmentOptions(device="cpu", resampler="itk")).labelmap.array
    tor = segment(ct, bundle, SegmentOptions(device="cpu", resampler="torch")).labelmap.array
    gt = truth.array > 0

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    assert (itk > 0).sum() > 100_000
    assert dice(itk > 0, tor > 0) >= 0.997
    assert abs(dice(itk > 0, gt) - dice(tor > 0, gt)) <= 0.003
    assert abs(int((itk == 2).sum()) - int((tor == 2).sum())) <= 0.05 * max(1, int((itk == 2).sum()))


def test_resampler_choice():
    default = SegmentOptions().resampler
    assert stage_pass.torch_resampler(default, torch.device("cuda")) == torch.device("cuda")
    assert stage_pass.torch_resampler(default, CPU) is None
    assert stage_pass.torch_resampler("itk", torch.device("cuda")) is None
    assert stage_pass.torch_resampler("torch", CPU) == CPU
    with pytest.raises(ValueError, match="resampler"):
        segment(Volume(np.zeros((4, 4, 4), np.int16)), None, SegmentOptions(device="cpu", resampler="scipy"))


def _oom(*a, **k):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_gpu_resampling_out_of_memory_falls_back_to_itk(monkeypatch):
    """A GPU too full to resample: the case is resampled with ITK instead, same result, with a warning."""
    from LiverCTSegmentationLib.engine import resample_torch

    bundle = ModelBundle.load(models.resolve_model("liverct-phantom-demo"))
    ct, _ = make_phantom(70001, orientation="LPS", fov="full")
    want = segment(ct, bundle, SegmentOptions(device="cpu", resampler="itk"))
    monkeypatch.setattr(resample_torch, "resample_linear", _oom)
    got = segment(ct, bundle, SegmentOptions(device="cpu", resampler="torch"))
    np.testing.assert_array_equal(got.labelmap.array, want.labelmap.array)
    assert got.warnings.count(pipeline.GPU_RESAMPLE_OOM) == 1
    assert pipeline.GPU_RESAMPLE_OOM not in want.warnings


def test_gpu_inference_out_of_memory_is_a_clear_resource_error(monkeypatch):
    from LiverCTSegmentationLib.engine import inference
    from LiverCTSegmentationLib.engine.errors import ResourceError

    bundle = ModelBundle.load(models.resolve_model("liverct-phantom-demo"))
    ct, _ = make_phantom(70001, orientation="LPS", fov="full")
    monkeypatch.setattr(inference, "sliding_window_predict", _oom)
    with pytest.raises(ResourceError, match="GPU ran out of memory in the coarse pass .*choose device 'cpu'"):
        segment(ct, bundle, SegmentOptions(device="cpu"))


def test_gpu_paste_back_out_of_memory_falls_back_to_itk(monkeypatch):
    """The stages resampled on the "GPU", only the paste-back runs out: ITK pastes, one warning."""
    bundle = ModelBundle.load(models.resolve_model("liverct-phantom-demo"))
    ct, _ = make_phantom(70001, orientation="LPS", fov="full")
    want = segment(ct, bundle, SegmentOptions(device="cpu", resampler="torch"))
    monkeypatch.setattr(preprocess, "_paste_smooth_torch", _oom)
    got = segment(ct, bundle, SegmentOptions(device="cpu", resampler="torch"))
    assert got.warnings.count(pipeline.GPU_RESAMPLE_OOM) == 1
    assert got.labelmap.same_grid(ct) and int((got.labelmap.array > 0).sum()) > 100_000
    # ITK's paste of the same stage labels: equal but for voxels on the 0.5 cut
    assert int((got.labelmap.array != want.labelmap.array).sum()) <= 0.0005 * int((want.labelmap.array > 0).sum())
