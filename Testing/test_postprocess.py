"""Post-processing rules on hand-built labelmaps with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from LiverCTSegmentationLib.engine.postprocess import (
    fill_holes_3d,
    fill_holes_per_slice,
    largest_component,
    lesions_only,
    postprocess,
    postprocess_lesions,
)

SP = (1.0, 1.0, 1.0)
NO_SPECKS = {"min_lesion_mm3": 0.0, "tumor_max_distance_mm": 5.0, "fill_holes": True}


def box(a: np.ndarray, k: tuple, j: tuple, i: tuple, value: int) -> None:
    a[k[0] : k[1], j[0] : j[1], i[0] : i[1]] = value


def test_largest_component_keeps_bigger_blob_and_is_26_connected() -> None:
    m = np.zeros((10, 10, 10), bool)
    m[1:4, 1:4, 1:4] = True  # 27 voxels
    m[6:8, 6:8, 6:8] = True  # 8 voxels
    m[4, 4, 4] = True  # touches the first blob only through a corner
    out = largest_component(m)
    assert out.sum() == 28 and out[4, 4, 4] and not out[6:8, 6:8, 6:8].any()
    assert largest_component(m, fully_connected=False).sum() == 27
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()


def test_smaller_liver_blob_removed_with_its_tumour() -> None:
    lab = np.zeros((20, 20, 20), np.uint8)
    box(lab, (2, 10), (2, 10), (2, 10), 1)
    box(lab, (4, 6), (4, 6), (4, 6), 2)
    box(lab, (14, 18), (14, 18), (14, 18), 1)
    box(lab, (15, 17), (15, 17), (15, 17), 2)
    out = postprocess(lab, SP, NO_SPECKS)
    assert not out[12:, 12:, 12:].any()
    assert (out[2:10, 2:10, 2:10] > 0).all()
    assert (out == 2).sum() == 8
    assert out.dtype == np.uint8 and out.shape == lab.shape


def test_tumour_far_from_liver_removed_near_tumour_kept() -> None:
    lab = np.zeros((30, 30, 30), np.uint8)
    box(lab, (5, 15), (5, 15), (5, 15), 1)
    # Detached tumour, 3 voxel gap -> centres 4 mm from the liver surface: kept.
    box(lab, (8, 11), (8, 11), (18, 22), 2)
    # Detached tumour 10 mm away: removed (but it is smaller, so not the organ).
    box(lab, (25, 27), (8, 10), (8, 10), 2)
    out = postprocess(lab, SP, NO_SPECKS)
    assert (out[8:11, 8:11, 18:22] == 2).all()  # kept whole, far side 7 mm away
    assert not out[25:27].any()
    # Same near tumour with a 3 mm limit: now too far.
    out3 = postprocess(lab, SP, {**NO_SPECKS, "tumor_max_distance_mm": 3.0})
    assert not out3[8:11, 8:11, 18:22].any()


def test_distance_uses_physical_spacing() -> None:
    lab = np.zeros((20, 20, 20), np.uint8)
    box(lab, (5, 15), (5, 15), (2, 8), 1)
    box(lab, (8, 11), (8, 11), (10, 12), 2)  # 2-voxel gap in i: centre distance 3 voxels
    cfg = {**NO_SPECKS, "tumor_max_distance_mm": 5.0}
    assert (postprocess(lab, (1.0, 1.0, 1.0), cfg) == 2).any()  # 3 mm
    assert not (postprocess(lab, (2.0, 1.0, 1.0), cfg) == 2).any()  # 6 mm along i


def test_holes_filled_tumour_stays_tumour() -> None:
    lab = np.zeros((16, 16, 16), np.uint8)
    box(lab, (2, 14), (2, 14), (2, 14), 1)
    box(lab, (6, 10), (6, 10), (6, 10), 0)  # closed 3D cavity
    box(lab, (7, 9), (7, 9), (7, 9), 2)  # tumour floating in the cavity
    out = postprocess(lab, SP, NO_SPECKS)
    assert (out[7:9, 7:9, 7:9] == 2).all()
    cavity = np.zeros(lab.shape, bool)
    box(cavity, (6, 10), (6, 10), (6, 10), 1)
    cavity[7:9, 7:9, 7:9] = False
    assert (out[cavity] == 1).all()
    no_fill = postprocess(lab, SP, {**NO_SPECKS, "fill_holes": False})
    assert (no_fill[cavity] == 0).all()


def test_per_slice_fill_closes_holes_open_in_3d() -> None:
    # A tube along k: its lumen touches the k-faces, so only the slice-wise fill closes it.
    m = np.zeros((8, 12, 12), bool)
    m[:, 2:10, 2:10] = True
    m[:, 4:8, 4:8] = False
    assert not fill_holes_3d(m)[:, 4:8, 4:8].any()
    assert fill_holes_per_slice(m)[:, 4:8, 4:8].all()
    # A slice-wise hole open to the in-plane border stays open.
    c = m.copy()
    c[:, 5:7, 0:4] = False
    assert not fill_holes_per_slice(c)[:, 5, 5].any()
    out = postprocess(m.astype(np.uint8), SP, NO_SPECKS)
    assert (out[:, 4:8, 4:8] == 1).all()


def test_specks_below_threshold_dropped() -> None:
    lab = np.zeros((20, 20, 20), np.uint8)
    box(lab, (2, 18), (2, 18), (2, 12), 1)
    box(lab, (5, 7), (5, 7), (5, 7), 2)  # 8 voxels = 8 mm^3 inside liver -> liver
    box(lab, (10, 14), (10, 14), (5, 9), 2)  # 64 mm^3 inside liver -> kept
    box(lab, (5, 7), (5, 7), (14, 16), 2)  # 8 mm^3 detached, 2 mm gap -> background
    cfg = {"min_lesion_mm3": 30.0, "tumor_max_distance_mm": 5.0}
    out = postprocess(lab, SP, cfg)
    assert (out[5:7, 5:7, 5:7] == 1).all()
    assert (out[10:14, 10:14, 5:9] == 2).all()
    assert not out[5:7, 5:7, 14:16].any()
    assert (out == 2).sum() == 64
    # With 0.5 mm spacing the 64-voxel lesion is only 8 mm^3: dropped too.
    assert not (postprocess(lab, (0.5, 0.5, 0.5), cfg) == 2).any()


def test_empty_and_tumour_only_inputs() -> None:
    assert not postprocess(np.zeros((5, 5, 5), np.uint8), SP, None).any()
    lab = np.zeros((6, 6, 6), np.uint8)
    lab[1:5, 1:5, 1:5] = 2  # tumour only: it is the organ component
    assert (postprocess(lab, SP, NO_SPECKS) == 2).sum() == 64
    with pytest.raises(ValueError):
        postprocess(np.zeros((5, 5), np.uint8), SP, None)


def test_input_not_modified_and_other_labels_removed() -> None:
    lab = np.zeros((10, 10, 10), np.uint8)
    box(lab, (2, 8), (2, 8), (2, 8), 1)
    lab[0, 0, 0] = 7
    before = lab.copy()
    out = postprocess(lab, SP, NO_SPECKS)
    assert np.array_equal(lab, before)
    assert set(np.unique(out)) == {0, 1}


def test_lesion_only_postprocess_keeps_every_lesion_and_drops_specks() -> None:
    lab = np.zeros((30, 30, 30), np.uint8)
    box(lab, (2, 8), (2, 8), (2, 8), 1)      # 216 mm3
    box(lab, (20, 25), (20, 25), (20, 25), 1)  # 125 mm3, far from the first
    lab[15, 2, 27] = 1                           # 1 mm3 speck
    out = postprocess_lesions(lab, SP, {"min_lesion_mm3": 30.0, "fill_holes": True})
    assert (out[2:8, 2:8, 2:8] == 1).all() and (out[20:25, 20:25, 20:25] == 1).all()
    assert out[15, 2, 27] == 0 and out.sum() == 216 + 125
    # The organ rules on the same map keep only the largest blob: what lung bundles must avoid.
    assert postprocess(lab, SP, NO_SPECKS).astype(bool).sum() == 216


def test_lesions_only_follows_flag_then_task() -> None:
    assert lesions_only({"training": {"task": "lung_tumor"}})
    assert not lesions_only({"training": {"task": "liver_tumor"}})
    assert not lesions_only({})
    assert lesions_only({"postprocess": {"lesions_only": True}, "training": {"task": "liver"}})
    assert not lesions_only({"postprocess": {"lesions_only": False}, "training": {"task": "lung_tumor"}})


# ------------------------------------------------ lesion fragments on the output grid
from LiverCTSegmentationLib.engine.postprocess import drop_lesion_fragments  # noqa: E402


def _organ_with_lesion() -> np.ndarray:
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[4:16, 4:16, 4:16] = 1
    lab[6:12, 6:12, 6:12] = 2  # a 216-voxel lesion
    return lab


def test_fragments_touching_liver_become_liver_and_lesions_stay():
    lab = _organ_with_lesion()
    lab[14, 14, 14] = 2  # a one-voxel sliver inside the liver
    out = drop_lesion_fragments(lab.copy(), (1.0, 1.0, 1.0), 30.0)
    assert out[14, 14, 14] == 1
    assert (out == 2).sum() == 216 and (out[6:12, 6:12, 6:12] == 2).all()


def test_fragments_away_from_the_liver_become_background():
    lab = _organ_with_lesion()
    lab[18, 18, 1] = 2  # alone, no liver among its 26 neighbours
    lab[16, 16, 16] = 2  # outside the organ, touching its corner voxel (15, 15, 15) diagonally
    out = drop_lesion_fragments(lab.copy(), (1.0, 1.0, 1.0), 30.0)
    assert out[18, 18, 1] == 0 and out[16, 16, 16] == 1


def test_the_size_limit_is_physical():
    lab = _organ_with_lesion()
    lab[14, 14, 13:15] = 2  # 2 voxels
    # 2 voxels of 8 mm^3 = 16 mm^3 < 30: dropped; of 27 mm^3 = 54 mm^3: kept
    assert drop_lesion_fragments(lab.copy(), (2.0, 2.0, 2.0), 30.0)[14, 14, 13] == 1
    assert drop_lesion_fragments(lab.copy(), (3.0, 3.0, 3.0), 30.0)[14, 14, 13] == 2
    # the 216-voxel lesion is itself under 30 mm^3 at 0.5 mm (27 mm^3): a speck too
    assert (drop_lesion_fragments(lab.copy(), (0.5, 0.5, 0.5), 30.0) == 2).sum() == 0
    assert (drop_lesion_fragments(lab.copy(), (0.6, 0.6, 0.6), 30.0)[6:12, 6:12, 6:12] == 2).all()


def test_no_tumour_is_a_no_op():
    lab = np.zeros((5, 5, 5), np.uint8)
    lab[1:4, 1:4, 1:4] = 1
    assert np.array_equal(drop_lesion_fragments(lab.copy(), (1, 1, 1), 30.0), lab)
