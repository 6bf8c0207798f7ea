"""Volumes, burden, lesion labelling and physical diameters with hand-computed answers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from LiverCTSegmentationLib.engine.statistics import (
    Statistics,
    _convex_hull,
    compute_statistics,
    label_lesions,
    longest_axial_diameter,
)
from LiverCTSegmentationLib.engine.volume import Volume


def test_volumes_and_burden_exact() -> None:
    a = np.zeros((10, 20, 20), np.uint8)
    a[0:10, 0:10, 0:10] = 1  # 1000 voxels organ in total
    a[0:2, 0:5, 0:5] = 2  # 50 voxels tumour
    vol = Volume(a, spacing=(2.0, 2.0, 2.5))  # 10 mm^3 per voxel
    st = compute_statistics(vol)
    assert st.liver_ml == pytest.approx(1000 * 10 / 1000)
    assert st.tumor_ml == pytest.approx(0.5)
    assert st.burden_percent == pytest.approx(5.0)
    assert st.tumor_count == 1 and st.lesions[0].volume_ml == pytest.approx(0.5)


def test_empty_labelmap() -> None:
    st = compute_statistics(Volume(np.zeros((4, 4, 4), np.uint8)))
    d = st.to_dict()
    assert d == {"liver_ml": 0.0, "tumor_count": 0, "tumor_ml": 0.0, "burden_percent": 0.0,
                 "largest_lesion_ml": 0.0, "largest_lesion_diameter_mm": 0.0}
    assert st.lesion_rows() == []


def test_square_lesion_diameter_half_mm_spacing() -> None:
    # 10 x 10 mm lesion at 0.5 mm: 20 x 20 voxels; centres span 19 * 0.5 = 9.5 mm per side.
    a = np.zeros((3, 30, 30), np.uint8)
    a[:, 2:28, 2:28] = 1
    a[1, 5:25, 5:25] = 2
    st = compute_statistics(Volume(a, spacing=(0.5, 0.5, 1.0)))
    assert st.tumor_count == 1
    assert st.lesions[0].longest_axial_diameter_mm == pytest.approx(9.5 * math.sqrt(2))
    assert st.lesions[0].volume_ml == pytest.approx(400 * 0.25 / 1000)


def test_diameter_anisotropic_and_axial_only() -> None:
    # 4 voxels along i (2 mm), 11 along j (0.7 mm) on one slice; long extent along k ignored.
    a = np.zeros((30, 20, 20), np.uint8)
    a[5, 2:13, 3:7] = 2
    a[5:25, 10, 10] = 2  # separate lesion, long along k (19 * 3 mm) but one voxel per slice
    st = compute_statistics(Volume(a, spacing=(2.0, 0.7, 3.0)))
    assert st.tumor_count == 2
    big, thin = st.lesions  # sorted by volume: 44 voxels vs 20 voxels
    assert big.longest_axial_diameter_mm == pytest.approx(math.hypot(3 * 2.0, 10 * 0.7))
    assert thin.longest_axial_diameter_mm == 0.0


def test_diameter_oblique_direction_and_centroid() -> None:
    a = np.zeros((5, 20, 20), np.uint8)
    a[2, 4:9, 3:15] = 2  # 12 x 5 voxels
    th = math.radians(30)
    # Rotated in-plane axes plus a tilted k axis: in-plane distances stay |S d|.
    d = np.array([[math.cos(th), -math.sin(th), 0.0], [math.sin(th), math.cos(th), 0.0], [0.0, 0.0, 1.0]])
    tilt = np.array([[1, 0, 0], [0, math.cos(0.3), -math.sin(0.3)], [0, math.sin(0.3), math.cos(0.3)]])
    direction = tilt @ d
    vol = Volume(a, spacing=(0.8, 1.5, 4.0), origin=(10.0, -20.0, 30.0), direction=direction)
    st = compute_statistics(vol)
    assert st.lesions[0].longest_axial_diameter_mm == pytest.approx(math.hypot(11 * 0.8, 4 * 1.5))
    centre_ijk = np.array([[(3 + 14) / 2, (4 + 8) / 2, 2.0]])
    assert np.allclose(st.lesions[0].centroid_lps, vol.physical_points(centre_ijk)[0], atol=1e-6)


def test_diameter_sheared_grid_uses_direction_columns() -> None:
    # Non-orthogonal i/j axes (60 degrees apart): the hull is taken in index space,
    # distances through the full matrix.
    m = np.zeros((1, 3, 3), bool)
    m[0, 0, 0] = m[0, 2, 2] = m[0, 0, 2] = m[0, 2, 0] = True
    ij = np.array([[1.0, 0.5], [0.0, math.sqrt(3) / 2], [0.0, 0.0]])
    # Long diagonal: (2,2) -> 2*(1,0) + 2*(0.5, .866) = (3, 1.732) -> 2*sqrt(3)
    assert longest_axial_diameter(m, ij) == pytest.approx(2 * math.sqrt(3))


def test_diameter_matches_brute_force_on_random_blob() -> None:
    rng = np.random.default_rng(3)
    m = rng.random((3, 25, 25)) < 0.3
    ij = np.array([[0.7, 0.0], [0.0, 1.3], [0.0, 0.0]])
    brute = 0.0
    for k in range(3):
        jj, ii = np.nonzero(m[k])
        p = np.stack([ii, jj], 1) @ ij.T
        brute = max(brute, float(np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1)).max()))
    assert longest_axial_diameter(m, ij) == pytest.approx(brute)


def test_convex_hull_small_cases() -> None:
    sq = np.array([[0, 0], [2, 0], [2, 2], [0, 2], [1, 1], [1, 0]])
    assert {tuple(p) for p in _convex_hull(sq)} == {(0, 0), (2, 0), (2, 2), (0, 2)}
    line = np.array([[0, 0], [1, 1], [2, 2]])
    assert {tuple(p) for p in _convex_hull(line)} == {(0, 0), (2, 2)}


def test_label_lesions_26_connected_sorted_by_size() -> None:
    a = np.zeros((10, 10, 10), np.uint8)
    a[1, 1, 1] = a[2, 2, 2] = 2  # corner-touching: one lesion of 2 voxels
    a[5:8, 5:8, 5:8] = 2  # 27 voxels
    a[0, 9, 9] = 1
    ids = label_lesions(Volume(a))
    assert ids.dtype == np.uint16
    assert ids.max() == 2 and (ids == 1).sum() == 27 and (ids == 2).sum() == 2
    assert ids[0, 9, 9] == 0
    assert not label_lesions(Volume(a), tumor_label=5).any()


def test_to_dict_and_rows_are_flat_json() -> None:
    a = np.zeros((4, 12, 12), np.uint8)
    a[:, :, :] = 1
    a[1, 1:4, 1:4] = 2
    a[2, 6:11, 6:11] = 2
    st = compute_statistics(Volume(a))
    assert isinstance(st, Statistics)
    d = st.to_dict()
    assert d["tumor_count"] == 2
    assert d["largest_lesion_ml"] == pytest.approx(0.025)
    assert d["largest_lesion_diameter_mm"] == pytest.approx(round(4 * math.sqrt(2), 2))
    rows = st.lesion_rows()
    assert [r["index"] for r in rows] == [1, 2]
    assert set(rows[0]) == {"index", "volume_ml", "longest_axial_diameter_mm",
                            "centroid_l_mm", "centroid_p_mm", "centroid_s_mm"}
    json.dumps({"summary": d, "lesions": rows})


def test_statistics_do_not_depend_on_empty_surroundings() -> None:
    # compute_statistics works on the labels' bounding box: embedding the same labels in a larger
    # empty oblique grid (origin moved accordingly) must give identical numbers and centroids.
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(3)
    small = np.zeros((12, 14, 16), np.uint8)
    small[1:11, 2:13, 1:15] = 1
    small[(rng.random(small.shape) > 0.93) & (small == 1)] = 2
    small[3:6, 4:8, 5:9] = 2
    d = Rotation.from_euler("xyz", [10, -20, 35], degrees=True).as_matrix()
    sp = (0.7, 0.9, 2.5)
    a = Volume(small, sp, (5.0, -3.0, 12.0), d)
    big = np.zeros((40, 50, 60), np.uint8)
    big[20:32, 7:21, 30:46] = small
    origin_big = np.asarray(a.origin) - d @ (np.array([30, 7, 20]) * np.asarray(sp))
    b = Volume(big, sp, tuple(origin_big), d)
    sa, sb = compute_statistics(a), compute_statistics(b)
    assert sa.tumor_count > 3
    assert sa.to_dict() == sb.to_dict()
    for la, lb in zip(sa.lesions, sb.lesions):
        assert la.index == lb.index and la.volume_ml == pytest.approx(lb.volume_ml)
        assert la.centroid_lps == pytest.approx(lb.centroid_lps, abs=1e-6)
    assert np.array_equal(label_lesions(b)[20:32, 7:21, 30:46], label_lesions(a))
