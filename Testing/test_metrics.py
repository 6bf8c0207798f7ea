"""Metrics against hand-computed values on tiny arrays (spacing order matters)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from liverct_training import metrics as M


def cube(shape=(10, 10, 10), lo=(3, 3, 3), size=4):
    a = np.zeros(shape, bool)
    a[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = True
    return a


@pytest.mark.parametrize(
    "axis,spacing_ijk,face_mm,inner_mm",
    [
        # shift along k (array axis 0): spacing k = 3 -> faces 3 mm apart; the 2x2 centre of the
        # overlapped face is 1 voxel in-plane from the other cube's side walls: min(i=1, j=2) = 1 mm.
        (0, (1.0, 2.0, 3.0), 3.0, 1.0),
        # shift along i (array axis 2): spacing i = 2 -> 2 mm; centre voxels: min(j=0.5, k=3) = 0.5 mm.
        (2, (2.0, 0.5, 3.0), 2.0, 0.5),
    ],
)
def test_two_cubes_offset_by_one_voxel(axis, spacing_ijk, face_mm, inner_mm):
    a = cube()
    lo = [3, 3, 3]
    lo[axis] += 1
    b = cube(lo=tuple(lo))
    # 4^3 cubes, overlap 4*4*3 = 48, union 80.
    assert M.dice(a, b) == pytest.approx(2 * 48 / 128)
    assert M.iou(a, b) == pytest.approx(48 / 80)
    # Surfaces: 56 voxels each. Directed A->B: 16 voxels of A's outer face at face_mm,
    # 4 centre voxels of A's inner face (inside B) at inner_mm, 36 on B's surface (0).
    # Symmetric for B->A. Pooled 112 distances: 32 x face, 8 x inner, 72 x 0.
    d_ab, d_ba = M.surface_distances(a, b, spacing_ijk)
    assert d_ab.size == 56 and d_ba.size == 56
    for d in (d_ab, d_ba):
        assert np.count_nonzero(np.isclose(d, face_mm)) == 16
        assert np.count_nonzero(np.isclose(d, inner_mm)) == 4
        assert np.count_nonzero(d == 0) == 36
    dm = M.distance_metrics(a, b, spacing_ijk)
    # 95th percentile at index 0.95 * 111 = 105.45; sorted indices 80..111 hold face_mm.
    assert dm["hd95"] == pytest.approx(face_mm)
    assert dm["hd"] == pytest.approx(face_mm)
    assert dm["assd"] == pytest.approx((32 * face_mm + 8 * inner_mm) / 112)
    assert M.relative_volume_difference(a, b) == 0.0


def test_spacing_is_ijk_not_kji():
    """A shift along k must be measured with the k spacing (last in spacing_ijk)."""
    a = cube()
    b = cube(lo=(4, 3, 3))
    assert M.distance_metrics(a, b, (1.0, 1.0, 5.0))["hd"] == pytest.approx(5.0)
    assert M.distance_metrics(a, b, (5.0, 1.0, 1.0))["hd"] == pytest.approx(1.0)


def test_hd95_percentile_hand_computed():
    # single voxels: distance = 3 voxels along j with spacing j = 0.7 -> 2.1 mm everywhere
    a = np.zeros((5, 8, 5), bool)
    b = np.zeros((5, 8, 5), bool)
    a[2, 1, 2] = True
    b[2, 4, 2] = True
    dm = M.distance_metrics(a, b, (1.0, 0.7, 2.0))
    assert dm["hd95"] == pytest.approx(2.1) and dm["assd"] == pytest.approx(2.1)


def test_empty_conventions():
    e = np.zeros((6, 6, 6), bool)
    c = cube((6, 6, 6), (1, 1, 1), 3)
    both = M.class_metrics(e, e, (1, 1, 1))
    assert both["dice"] == 1.0 and both["iou"] == 1.0
    assert both["hd95"] == 0.0 and both["assd"] == 0.0 and both["rvd"] == 0.0
    miss = M.class_metrics(e, c, (1, 1, 1))  # prediction empty, truth not
    assert miss["dice"] == 0.0 and miss["iou"] == 0.0
    assert math.isnan(miss["hd95"]) and math.isnan(miss["assd"]) and miss["rvd"] == -1.0
    fp = M.class_metrics(c, e, (1, 1, 1))  # truth empty, prediction not
    assert fp["dice"] == 0.0 and math.isnan(fp["hd95"]) and math.isnan(fp["rvd"])
    assert fp["true_empty"] and not fp["pred_empty"]


def test_identical_masks_zero_distance_and_volume():
    c = cube()
    m = M.class_metrics(c, c, (0.8, 0.8, 2.5))
    assert m["dice"] == 1.0 and m["hd95"] == 0.0 and m["assd"] == 0.0
    assert m["true_ml"] == pytest.approx(64 * 0.8 * 0.8 * 2.5 / 1000)


def test_rvd_sign():
    t = cube(size=4)
    p = cube(size=2)
    assert M.relative_volume_difference(p, t) == pytest.approx((8 - 64) / 64)


def test_lesion_detection_overlap_and_iou():
    truth = np.zeros((20, 20, 20), bool)
    pred = np.zeros_like(truth)
    truth[2:6, 2:6, 2:6] = True          # lesion A (64 voxels)
    truth[12:16, 12:16, 12:16] = True    # lesion B (64), missed
    pred[5:9, 2:6, 2:6] = True           # overlaps A by one slab (16 voxels): IoU 16/112
    pred[15:18, 2:5, 14:17] = True       # false positive
    d = M.lesion_detection(pred, truth)
    assert (d["n_true"], d["n_pred"], d["tp_true"], d["tp_pred"]) == (2, 2, 1, 1)
    assert d["recall"] == 0.5 and d["precision"] == 0.5
    assert d["lesion_dice"] == pytest.approx([2 * 16 / 128, 0.0])
    strict = M.lesion_detection(pred, truth, min_iou=0.2)  # 16/112 = 0.14 < 0.2 -> no match
    assert strict["tp_true"] == 0 and strict["recall"] == 0.0
    assert M.lesion_detection(pred, truth, min_iou=0.1)["tp_true"] == 1


def test_lesion_detection_diagonal_is_one_lesion_and_empty():
    t = np.zeros((5, 5, 5), bool)
    t[1, 1, 1] = t[2, 2, 2] = True  # corner-touching: one lesion with 26-connectivity
    assert M.label_components(t)[1] == 1
    d = M.lesion_detection(np.zeros_like(t), np.zeros_like(t))
    assert d["n_true"] == 0 and math.isnan(d["recall"]) and math.isnan(d["precision"])


def test_case_metrics_classes_and_global_dice():
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[1:7, 1:7, 1:7] = 1
    truth[3:5, 3:5, 3:5] = 2
    pred = truth.copy()
    pred[3:5, 3:5, 3:5] = 1  # tumour missed, organ perfect
    m = M.case_metrics(pred, truth, (1, 1, 1), {"liver": (1, 2), "tumor": (2,)})
    assert m["liver"]["dice"] == 1.0
    assert m["tumor"]["dice"] == 0.0 and m["tumor"]["lesions"]["recall"] == 0.0
    g = M.GlobalDice()
    g.add(pred == 2, truth == 2)
    g.add(truth == 2, truth == 2)
    assert g.value == pytest.approx(2 * 8 / (8 + 16))
    with pytest.raises(ValueError):
        M.case_metrics(pred[:-1], truth, (1, 1, 1), {"liver": (1,)})


def test_describe_skips_nan():
    d = M.describe([1.0, float("nan"), 3.0])
    assert d["n"] == 2 and d["n_nan"] == 1 and d["mean"] == 2.0 and d["median"] == 2.0


def test_crop_does_not_change_distances_at_array_border():
    a = np.zeros((6, 6, 6), bool)
    b = np.zeros((6, 6, 6), bool)
    a[0:3, 0:3, 0:3] = True  # touches the array border: border voxels are surface
    b[0:3, 0:3, 1:4] = True
    d_ab, _ = M.surface_distances(a, b, (1, 1, 1))
    assert d_ab.size == 26 and d_ab.max() == pytest.approx(1.0)
