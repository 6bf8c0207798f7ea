"""bench/bench_body_crop.py: the body box it crops the coarse search to, and its clean skip."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_body_crop as B  # noqa: E402

from LiverCTSegmentationLib.engine.volume import Volume  # noqa: E402


def test_without_the_real_cts_it_says_skip(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(B.R, "CHAOS", tmp_path / "absent_ct.nii.gz")
    monkeypatch.setattr(B, "SHIPPED", {"chaos": tmp_path / "absent_ct.nii.gz"})
    assert B.main(["--isa", "native"]) == 0
    assert "SKIP:" in capsys.readouterr().out


def test_body_roi_is_the_box_above_the_threshold_plus_the_margin_in_lps():
    arr = np.full((10, 20, 30), -1000, np.int16)
    arr[2:5, 4:10, 6:21] = 40  # k 2-4, j 4-9, i 6-20
    direction = np.diag([-1.0, 1.0, 1.0])  # i runs towards -L: the LPS box must still be min..max
    vol = Volume(arr, (1.0, 2.0, 3.0), (100.0, 0.0, 0.0), direction)
    (lo, hi), share = B.body_roi(vol, -500.0, 5.0)
    assert share == pytest.approx((3 * 6 * 15) / arr.size)
    # voxel corners: i 5.5..20.5 (x = 100 - i), j 3.5..9.5 (x2 mm), k 1.5..4.5 (x3 mm); then +/- 5 mm
    np.testing.assert_allclose(lo, [100 - 20.5 - 5, 3.5 * 2 - 5, 1.5 * 3 - 5])
    np.testing.assert_allclose(hi, [100 - 5.5 + 5, 9.5 * 2 + 5, 4.5 * 3 + 5])
    assert B.body_roi(vol.with_array(np.full_like(arr, -1000)), -500.0, 5.0) is None
