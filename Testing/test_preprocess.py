"""Preprocessing: resampling through physical space, normalisation, crop/pad."""
from __future__ import annotations

import numpy as np
import pytest

from LiverCTSegmentationLib.engine.preprocess import (
    crop_box, normalise, pad_to_multiple, resample_labels_to_reference, resample_like, resample_to_spacing)
from LiverCTSegmentationLib.engine.volume import Volume


def rot(axis, deg):
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def centroid_lps(vol: Volume, mask) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    return vol.physical_points(np.c_[i, j, k]).mean(axis=0)


def test_resample_to_spacing_keeps_field_of_view():
    v = Volume(np.zeros((30, 40, 50), np.int16), (0.8, 0.8, 2.0), (1, 2, 3), rot(2, 30))
    r = resample_to_spacing(v, (2.0, 2.0, 2.0))
    assert r.shape_kji == (30, 16, 20) and r.array.dtype == np.float32
    np.testing.assert_allclose(r.direction, v.direction)
    # the first voxel's outer corner is preserved
    c0 = v.physical_points(np.array([[-0.5, -0.5, -0.5]]))
    c1 = r.physical_points(np.array([[-0.5, -0.5, -0.5]]))
    np.testing.assert_allclose(c0, c1, atol=1e-6)


def test_nearest_labels_keep_dtype_and_position():
    a = np.zeros((20, 40, 40), np.uint8)
    a[5:12, 10:20, 22:35] = 2
    v = Volume(a, (1.0, 1.0, 2.0), (0, 0, 0), rot(0, 15))
    r = resample_to_spacing(v, (2.0, 2.0, 2.0), "nearest")
    assert r.array.dtype == np.uint8 and set(np.unique(r.array)) <= {0, 2}
    np.testing.assert_allclose(centroid_lps(v, a > 0), centroid_lps(r, r.array > 0), atol=1.0)


def test_resample_like_flipped_and_oblique_grids():
    a = np.zeros((30, 30, 30), np.uint8)
    a[4:10, 6:20, 15:27] = 1
    src = Volume(a, (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3))
    # reference: RAS-flipped (i and j reversed), rotated, anisotropic; covering the same region
    d = rot(2, 20) @ np.diag([-1.0, -1.0, 1.0])
    ref = Volume(np.zeros((40, 60, 60), np.int16), (0.7, 0.7, 1.0), (35, 35, -5), d)
    out = resample_like(src, ref)
    assert out.same_grid(ref) and out.array.dtype == np.uint8
    np.testing.assert_allclose(centroid_lps(src, a > 0), centroid_lps(out, out.array > 0), atol=0.6)
    vol_src = (a > 0).sum() * 1.0
    vol_out = (out.array > 0).sum() * 0.7 * 0.7
    assert vol_out == pytest.approx(vol_src, rel=0.1)
    fast = resample_labels_to_reference(src, ref)
    np.testing.assert_array_equal(fast.array, out.array)
    assert fast.same_grid(ref)


def test_resample_labels_partial_overlap_and_outside():
    ref = Volume(np.zeros((10, 10, 10), np.int16))
    lab = Volume(np.ones((4, 4, 4), np.uint8), origin=(8, 8, 8))
    out = resample_labels_to_reference(lab, ref)
    assert out.array.sum() == 8 and out.array[8:, 8:, 8:].all()
    far = Volume(np.ones((4, 4, 4), np.uint8), origin=(100, 0, 0))
    assert resample_labels_to_reference(far, ref).array.sum() == 0


def test_normalise():
    x = np.array([-1000, 0, 50, 1000], np.int16)
    y = normalise(x, {"clip": [-200, 300], "mean": 50, "std": 125})
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [-2.0, -0.4, 0.0, 2.0])
    assert x[0] == -1000  # input untouched


def test_crop_box_origin_and_pad():
    v = Volume(np.arange(1000).reshape(10, 10, 10), (1, 2, 3), (5, 5, 5), rot(1, 10))
    c = crop_box(v, (2, 3, 4), (5, 6, 7))
    assert c.shape_kji == (4, 4, 4) and c.array[0, 0, 0] == v.array[4, 3, 2]
    np.testing.assert_allclose(c.physical_points(np.zeros((1, 3))), v.physical_points(np.array([[2, 3, 4]])))
    p, shape = pad_to_multiple(np.ones((5, 6, 7)), (4, 4, 4), value=-1)
    assert p.shape == (8, 8, 8) and shape == (5, 6, 7) and p[7, 7, 7] == -1


# ------------------------------------------------------------- canonical grids
AXIS_ORDERS = {
    "LPS": np.eye(3),
    "RAS": np.diag([-1.0, -1.0, 1.0]),
    "coronal": np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]),       # j runs inferior, k anterior
    "permuted": np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, -1.0, 0]]),
}


def _same_patient(direction: np.ndarray) -> Volume:
    """One physical object (a block off-centre towards patient right, anterior, up) on a grid with
    ``direction``: the image content at each LPS point is the same whatever the axis order."""
    sp = np.array([2.0, 2.0, 2.0])
    extent_lps = np.array([48.0, 40.0, 32.0])       # the same field of view in every axis order
    size = np.array([int(extent_lps[np.argmax(np.abs(direction[:, c]))] / 2.0) for c in range(3)])
    centre = np.zeros(3)
    origin = centre - direction @ ((size - 1) / 2 * sp)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    lps = origin + (ijk * sp) @ direction.T
    inside = (lps[:, 0] < -4) & (lps[:, 0] > -18) & (lps[:, 1] < 0) & (lps[:, 2] > 2)
    arr = np.zeros(size, np.uint8)
    arr[tuple(ijk[inside].T)] = 1
    return Volume(np.ascontiguousarray(arr.transpose(2, 1, 0)), tuple(sp), tuple(origin), direction)


@pytest.mark.parametrize("name", sorted(AXIS_ORDERS))
def test_canonical_grid_shows_every_axis_order_the_same_way(name):
    ref = resample_to_spacing(_same_patient(AXIS_ORDERS["LPS"]), (2.0, 2.0, 2.0), "nearest", orientation="canonical")
    v = _same_patient(AXIS_ORDERS[name])
    c = resample_to_spacing(v, (2.0, 2.0, 2.0), "nearest", orientation="canonical")
    np.testing.assert_allclose(c.direction, np.eye(3), atol=1e-9)
    np.testing.assert_array_equal(c.array, ref.array)          # the network sees identical arrays
    np.testing.assert_allclose(c.origin, ref.origin, atol=1e-6)
    back = resample_like(c, v)                                  # and labels map back exactly
    np.testing.assert_array_equal(back.array, v.array)
    native = resample_to_spacing(v, (2.0, 2.0, 2.0), "nearest")
    if name != "LPS":
        assert native.array.shape != c.array.shape or not np.array_equal(native.array, c.array)


def test_canonical_grid_keeps_obliqueness_and_field_of_view():
    d = rot(2, 25) @ np.diag([-1.0, -1.0, 1.0])              # RAS rotated 25 degrees about S
    v = Volume(np.zeros((10, 30, 40), np.int16), (0.8, 0.8, 2.5), (5, -3, 2), d)
    c = resample_to_spacing(v, (2.0, 2.0, 2.0), orientation="canonical")
    np.testing.assert_allclose(np.abs(np.diag(c.direction)), np.cos(np.deg2rad([25, 25, 0])), atol=1e-9)
    assert np.all(np.diag(c.direction) > 0)
    lo_v = v.physical_points(np.array([[-0.5, -0.5, -0.5], [39.5, 29.5, 9.5]]))
    lo_c = c.physical_points(np.array([[-0.5, -0.5, -0.5], np.asarray(c.size_ijk) - 0.5]))
    # Same box (corners swap where an axis was flipped), up to rounding the size to whole voxels.
    np.testing.assert_allclose(np.sort(lo_v, 0), np.sort(lo_c, 0), atol=1.0)


def test_unknown_orientation_is_refused():
    with pytest.raises(ValueError, match="orientation"):
        resample_to_spacing(Volume(np.zeros((2, 2, 2))), (1, 1, 1), orientation="RAS")


# --------------------------------------------------------- smooth paste-back
def _sphere(shape_kji, spacing, centre_mm, r_mm, inner_r_mm=None) -> np.ndarray:
    k, j, i = np.indices(shape_kji, dtype=float)
    d = np.sqrt(((i + 0.5) * spacing[0] - centre_mm[0]) ** 2 + ((j + 0.5) * spacing[1] - centre_mm[1]) ** 2
                + ((k + 0.5) * spacing[2] - centre_mm[2]) ** 2)
    out = (d <= r_mm).astype(np.uint8)
    if inner_r_mm:
        out[d <= inner_r_mm] = 2
    return out


def test_smooth_paste_back_beats_nearest_on_a_finer_grid_and_keeps_nesting(monkeypatch):
    from LiverCTSegmentationLib.engine import preprocess

    # Labels on a 3 mm grid (origin = first voxel centre at 1.5 mm) pasted onto a 0.75 mm reference.
    coarse = Volume(_sphere((16, 16, 16), (3, 3, 3), (24, 24, 24), 15, 6), (3, 3, 3), (1.5, 1.5, 1.5))
    ref = Volume(np.zeros((64, 64, 64), np.int16), (0.75, 0.75, 0.75), (0.375, 0.375, 0.375))
    truth = _sphere((64, 64, 64), (0.75, 0.75, 0.75), (24, 24, 24), 15, 6)
    near = resample_labels_to_reference(coarse, ref)
    smooth = resample_labels_to_reference(coarse, ref, smooth=True)
    assert smooth.same_grid(ref) and smooth.array.dtype == np.uint8

    def dice(a, b):
        return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
    assert dice(smooth.array > 0, truth > 0) > dice(near.array > 0, truth > 0)
    assert dice(smooth.array == 2, truth == 2) >= dice(near.array == 2, truth == 2) - 0.01
    assert (coarse.array == 2).any() and not np.any((smooth.array == 2) & (truth == 0))
    # Slab processing gives the same result as one block.
    monkeypatch.setattr(preprocess, "SMOOTH_CHUNK_VOXELS", 64 * 64 * 3)
    np.testing.assert_array_equal(resample_labels_to_reference(coarse, ref, smooth=True).array, smooth.array)


def test_smooth_paste_back_on_the_same_grid_is_exact():
    a = _sphere((20, 24, 28), (1, 1, 1), (14, 12, 10), 7, 3)
    v = Volume(a, (1.0, 1.0, 1.0), (0.5, 0.5, 0.5), rot(2, 10))
    np.testing.assert_array_equal(resample_labels_to_reference(v, v, smooth=True).array, a)
