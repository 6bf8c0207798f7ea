"""Property-based tests (hypothesis) of the geometry code over random grids.

Random spacings, origins and direction matrices: proper rotations, reflections
(left-handed frames), axis permutations and obliques. The checks compare
against independent references (SimpleITK's own index->point mapping, and an
object defined in physical millimetres), not against the code under test.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from LiverCTSegmentationLib.engine.volume import LPS_TO_RAS, Volume

SETTINGS = dict(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite = dict(allow_nan=False, allow_infinity=False)
spacings = st.tuples(*[st.floats(0.3, 5.0, **finite)] * 3)
origins = st.tuples(*[st.floats(-500.0, 500.0, **finite)] * 3)
shapes = st.tuples(st.integers(2, 7), st.integers(2, 7), st.integers(2, 7))


@st.composite
def directions(draw) -> np.ndarray:
    """Orthonormal 3x3 (det +-1): permutation x sign flips x (identity | random oblique rotation)."""
    perm = np.eye(3)[list(draw(st.permutations([0, 1, 2])))]
    flips = np.diag([draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)])
    m = perm @ flips
    if draw(st.booleans()):
        q = np.array([draw(st.floats(-1.0, 1.0, **finite)) for _ in range(4)])
        if np.linalg.norm(q) > 0.1:
            w, x, y, z = q / np.linalg.norm(q)
            rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
            m = rot @ m
    return m


@st.composite
def volumes(draw, dtype=np.int16) -> Volume:
    shape = draw(shapes)
    seed = draw(st.integers(0, 2**16))
    arr = np.random.default_rng(seed).integers(-1000, 1000, size=shape).astype(dtype)
    return Volume(arr, draw(spacings), draw(origins), draw(directions()))


# ------------------------------------------------------------------ conversions
@settings(**SETTINGS)
@given(volumes())
def test_sitk_round_trip_and_index_to_point_agree_with_itk(vol: Volume) -> None:
    img = vol.to_sitk()
    back = Volume.from_sitk(img)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.same_grid(vol, atol=1e-9)
    # our ijk->LPS matrix must be ITK's own index->physical mapping
    m = vol.ijk_to_lps()
    for idx in [(0, 0, 0), tuple(int(s) - 1 for s in vol.size_ijk), (1, 0, 1)]:
        idx = tuple(min(i, s - 1) for i, s in zip(idx, vol.size_ijk))
        ours = m @ np.array([*idx, 1.0])
        np.testing.assert_allclose(ours[:3], img.TransformIndexToPhysicalPoint(idx), atol=1e-6)
        np.testing.assert_allclose(vol.physical_points(np.array([idx]))[0], ours[:3], atol=1e-6)


@settings(**SETTINGS)
@given(volumes())
def test_ijk_to_ras_round_trip_and_sign_convention(vol: Volume) -> None:
    ras = vol.ijk_to_ras()
    lps = vol.ijk_to_lps()
    # RAS differs from LPS exactly by negating x and y of every mapped point
    np.testing.assert_allclose(ras[:3, :], LPS_TO_RAS @ lps[:3, :], atol=1e-9)
    rebuilt = Volume.from_ijk_to_ras(vol.array, ras)
    assert rebuilt.same_grid(vol, atol=1e-9)
    assert np.isclose(np.linalg.det(rebuilt.direction), np.linalg.det(vol.direction))


@settings(**SETTINGS)
@given(volumes(), st.sampled_from([".nii.gz", ".nrrd", ".mha"]))
def test_write_read_round_trip_keeps_geometry(vol: Volume, ext: str) -> None:
    from LiverCTSegmentationLib.engine import io

    with tempfile.TemporaryDirectory() as d:
        back = io.read_volume(io.write_volume(vol, Path(d) / f"v{ext}"))
    np.testing.assert_array_equal(back.array, vol.array)
    # NIfTI stores the frame as float32 quaternion/sform: allow its rounding
    tol = 1e-4 if ext == ".nii.gz" else 1e-6
    np.testing.assert_allclose(back.spacing, vol.spacing, rtol=tol, atol=tol)
    np.testing.assert_allclose(back.direction, vol.direction, atol=tol * 10)
    np.testing.assert_allclose(back.origin, vol.origin, atol=tol * 1000)


# --------------------------------------------------- objects land in the right voxels
def _centres(vol: Volume) -> np.ndarray:
    """LPS centre of every voxel, shaped [k, j, i, 3]."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in vol.shape_kji], indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    return vol.physical_points(ijk).reshape(vol.shape_kji + (3,))


def _grid_around(centre: np.ndarray, shape, spacing, direction) -> Volume:
    """An empty uint8 grid whose centre voxel lies at ``centre`` (LPS)."""
    half = (np.asarray(shape[::-1], float) - 1) / 2  # i, j, k
    origin = centre - direction @ (np.asarray(spacing) * half)
    return Volume(np.zeros(shape, np.uint8), spacing, tuple(origin), direction)


def _sphere_checks(label: np.ndarray, ref: Volume, centre: np.ndarray, radius: float, margin: float) -> None:
    dist = np.linalg.norm(_centres(ref) - centre, axis=-1)
    inside, outside = dist < radius - margin, dist > radius + margin
    assert inside.sum() > 20, "test object too small for this grid"
    assert label[inside].all(), f"{int((~label[inside].astype(bool)).sum())} voxels inside the object missed"
    assert not label[outside].any(), f"{int(label[outside].astype(bool).sum())} voxels outside the object set"


@settings(**SETTINGS)
@given(ref_dir=directions(), src_dir=directions(), ref_sp=spacings, origin=origins,
       offset=st.tuples(*[st.floats(-6.0, 6.0, **finite)] * 3))
def test_resample_like_and_paste_back_put_a_physical_sphere_in_the_right_voxels(
        ref_dir, src_dir, ref_sp, origin, offset) -> None:
    from LiverCTSegmentationLib.engine.preprocess import resample_labels_to_reference, resample_like

    ref_sp = tuple(1.5 + s / 2.5 for s in ref_sp)  # 1.6..3.5 mm
    ref = _grid_around(np.asarray(origin), (24, 22, 20), ref_sp, ref_dir)
    # sphere off the grid centre so that a flip or shift of any axis is caught
    centre = np.asarray(origin) + np.asarray(offset) + ref_dir @ np.array([4.0, -3.0, 5.0])
    radius = 11.0
    # label defined on a finer grid in a different frame, around the sphere only
    src_sp = (1.0, 1.1, 0.9)
    src = _grid_around(centre, (30, 30, 30), src_sp, src_dir)
    src = src.with_array((np.linalg.norm(_centres(src) - centre, axis=-1) <= radius).astype(np.uint8))
    margin = 0.5 * float(np.linalg.norm(src_sp)) + 1e-3  # nearest neighbour moves a boundary by <= half a diagonal

    out = resample_like(src, ref)
    assert out.same_grid(ref, atol=1e-9)
    _sphere_checks(out.array, ref, centre, radius, margin)

    pasted = resample_labels_to_reference(src, ref)  # the pipeline's paste-back (covers a sub-box only)
    assert pasted.same_grid(ref, atol=1e-9) and pasted.array.dtype == np.uint8
    np.testing.assert_array_equal(pasted.array, out.array)


@pytest.fixture(scope="module")
def box_model(tmp_path_factory):
    from bundle_fixtures import make_box_bundle
    from LiverCTSegmentationLib.engine.bundle import ModelBundle

    folder = make_box_bundle(tmp_path_factory.mktemp("geom") / "box", liver_hu=(60.0, 200.0), tumor_hu=None,
                             coarse_spacing=4.0, fine_spacing=2.0, margin_mm=8.0)
    return ModelBundle.load(folder)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                               HealthCheck.function_scoped_fixture])
@given(direction=directions(), sp=spacings, origin=origins)
def test_pipeline_labelmap_aligns_with_input_grid(box_model, direction, sp, origin) -> None:
    from LiverCTSegmentationLib.engine import pipeline

    sp = tuple(1.2 + s / 3.0 for s in sp)  # 1.3..2.9 mm
    vol = _grid_around(np.asarray(origin), (40, 36, 38), sp, direction)
    centre = np.asarray(origin) + direction @ np.array([6.0, -4.0, 3.0])
    radius = 16.0
    dist = np.linalg.norm(_centres(vol) - centre, axis=-1)
    ct = np.where(dist <= radius, 120, -1000).astype(np.int16)
    vol = vol.with_array(ct)
    res = pipeline.segment(vol, box_model, pipeline.SegmentOptions(device="cpu", overlap=0.25))
    assert res.labelmap.same_grid(vol)
    # linear resampling to 2 mm and back blurs the boundary by about one fine voxel plus one input voxel
    margin = 2.0 * np.sqrt(3) / 2 + max(sp) * np.sqrt(3) / 2 + 0.5
    _sphere_checks(res.labelmap.array, vol, centre, radius, margin)


def test_subnormal_direction_cosines_found_by_hypothesis(box_model) -> None:
    """Regression (found by the property test above): a rotation with 1e-323 entries made ITK's SVD fail
    and the coarse resampling return nothing ("No liver found"). Such cosines are flushed to zero."""
    from LiverCTSegmentationLib.engine import pipeline

    direction = np.array([[-1.0, -1e-323, 0.0], [-1e-323, 1.0, 0.0], [0.0, 0.0, 1.0]])
    given_matrix = direction.copy()
    sp = (1.2 + 1 / 3.0,) * 3
    vol = _grid_around(np.zeros(3), (40, 36, 38), sp, direction)
    np.testing.assert_array_equal(direction, given_matrix)  # the caller's matrix is left alone
    assert vol.direction[0, 1] == 0.0 and vol.direction[1, 0] == 0.0
    centre = direction @ np.array([6.0, -4.0, 3.0])
    dist = np.linalg.norm(_centres(vol) - centre, axis=-1)
    vol = vol.with_array(np.where(dist <= 16.0, 120, -1000).astype(np.int16))
    res = pipeline.segment(vol, box_model, pipeline.SegmentOptions(device="cpu", overlap=0.25))
    margin = 2.0 * np.sqrt(3) / 2 + max(sp) * np.sqrt(3) / 2 + 0.5
    _sphere_checks(res.labelmap.array, vol, centre, 16.0, margin)
