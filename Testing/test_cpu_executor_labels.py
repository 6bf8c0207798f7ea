"""The float32 CPU executor (engine/fast_unet) gives the labels the torch module gave (issue 15).

Both runs in one process, float32 on the CPU (``bf16=False``: what a CPU without native bf16
runs; on this machine bf16 would otherwise keep torch's autocast path), the default model:

- always: the bundled sample CT (Resources/Samples/phantom_ct.nii.gz);
- with ../shared/data/real present: a real liver, a crop of the CHAOS CT around its liver, and
  the LiTS 117 crop (liver with tumours).

Agreement is required within liver Dice 0.999 (the issue's bar); measured: identical labels.
"""
from __future__ import annotations

import numpy as np
import pytest

from LiverCTSegmentationLib import models
from LiverCTSegmentationLib.engine import io
from LiverCTSegmentationLib.engine.bundle import ModelBundle
from LiverCTSegmentationLib.engine.pipeline import SegmentOptions, segment
from LiverCTSegmentationLib.engine.preprocess import crop_box
from LiverCTSegmentationLib.engine.volume import Volume

def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


@pytest.fixture(scope="module")
def default_bundle() -> ModelBundle:
    return ModelBundle.load(models.resolve_model(None))


def _both(vol: Volume, bundle: ModelBundle, monkeypatch) -> tuple[np.ndarray, np.ndarray]:
    """(labels with the executor, labels with the torch module), float32 on the CPU."""
    from LiverCTSegmentationLib.engine import fast_unet

    calls = []
    real = fast_unet.cpu_executor

    def spy(*a, **k):
        run = real(*a, **k)
        calls.append(run is not None)
        return run

    monkeypatch.setattr(fast_unet, "cpu_executor", spy)
    opts = SegmentOptions(device="cpu", bf16=False, threads=2)
    fast = segment(vol, bundle, opts).labelmap.array
    assert calls and all(calls), "the executor was not used: the comparison would compare torch with torch"
    monkeypatch.setenv("LIVERCT_FAST_UNET", "0")
    ref = segment(vol, bundle, opts).labelmap.array
    return fast, ref


def _assert_same(fast: np.ndarray, ref: np.ndarray) -> None:
    assert (ref > 0).sum() > 1000, "no liver found: the comparison says nothing"
    assert _dice(fast > 0, ref > 0) >= 0.999
    if (ref == 2).sum() > 100:
        assert _dice(fast == 2, ref == 2) >= 0.99


def test_bundled_sample_labels_match_torch(repo_root, default_bundle, monkeypatch) -> None:
    vol = io.read_volume(repo_root / "LiverCTSegmentation" / "Resources" / "Samples" / "phantom_ct.nii.gz")
    _assert_same(*_both(vol, default_bundle, monkeypatch))


def _liver_crop(ct: Volume, label: Volume, margin: int = 12) -> Volume:
    """The CT around its reference liver (+ margin voxels): a small real case."""
    kk, jj, ii = np.nonzero(label.array)
    lo = np.maximum([ii.min() - margin, jj.min() - margin, kk.min() - 2], 0)
    hi = np.minimum([ii.max() + margin, jj.max() + margin, kk.max() + 2], np.asarray(ct.size_ijk) - 1)
    return crop_box(ct, lo, hi)


@pytest.mark.parametrize("case", ["chaos_evalsample", "lits_117crop"])
def test_real_crop_labels_match_torch(real_data_dir, default_bundle, monkeypatch, case) -> None:
    ct = io.read_volume(real_data_dir / f"{case}_ct.nii.gz")
    if case == "chaos_evalsample":
        ct = _liver_crop(ct, io.read_volume(real_data_dir / f"{case}_label.nii.gz"))
    ct = ct.with_array(np.ascontiguousarray(ct.array))
    _assert_same(*_both(ct, default_bundle, monkeypatch))
