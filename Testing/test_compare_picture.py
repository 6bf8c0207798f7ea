"""The evaluation's compare picture shows the worst error: slice choice, title and the written PNG."""
from __future__ import annotations

import numpy as np
import pytest

from liverct_training import evaluate as E
from LiverCTSegmentationLib.engine.volume import Volume


def _pair() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((30, 40, 50), np.uint8)
    truth[5:25, 10:30, 10:40] = 1          # largest truth on every slice 5..24 alike
    pred = truth.copy()
    pred[27:29, 2:6, 20:30] = 1            # a false positive above the liver (slices 27-28, rows 2-5)
    pred[27, 2:6, 30:45] = 1               # ... largest on slice 27
    return truth, pred


def test_error_slices_point_at_the_largest_disagreement():
    truth, pred = _pair()
    k, j = E.error_slices(truth, pred)
    assert k == 27 and 2 <= j <= 5
    assert E.error_slices(truth, truth) == (5, 10)  # no error: where the truth is (first maximum)
    empty = np.zeros_like(truth)
    assert E.error_slices(empty, empty) == (15, 20)


def test_class_title_says_absent_not_a_perfect_dice():
    m = {"liver": {"dice": 0.9123, "sum_sizes": 10}, "tumor": {"dice": 1.0, "sum_sizes": 0}}
    assert E.class_title("c1", m) == "c1: liver Dice 0.912, tumor absent"


def test_compare_png_is_written_for_an_oblique_flipped_grid(tmp_path):
    pytest.importorskip("matplotlib")
    truth, pred = _pair()
    ct = Volume(np.full(truth.shape, -100, np.int16), spacing=(0.8, 0.8, 2.0), origin=(0.0, 0.0, 0.0),
                direction=np.diag([-1.0, -1.0, 1.0]))
    out = E.save_compare_png(ct, truth, pred, tmp_path / "c.png", "c1: liver Dice 0.9")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
