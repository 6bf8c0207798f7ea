"""The web app's statistics panel (``stats_panel.stats_view``): lesion rows, diameters, burden.

Plain Python (no trame, no Slicer): a hand-built labelmap with known answers,
then a phantom with lesions checked for internal consistency.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from LiverCTSegmentationLib.synthetic.phantom import make_phantom
from LiverCTSegmentationLib.engine.volume import Volume
from LiverCTSegmentationLib.web.stats_panel import empty_stats, stats_view

SPACING = (0.8, 0.8, 2.0)  # i, j, k mm: anisotropic so a swapped axis gives a wrong answer
VOXEL_ML = 0.8 * 0.8 * 2.0 / 1000


def _two_lesion_liver() -> Volume:
    arr = np.zeros((10, 60, 60), np.uint8)  # k, j, i
    arr[1:9, 5:55, 5:55] = 1                 # liver: 8 x 50 x 50 = 20000 voxels
    arr[2:6, 10:20, 10:20] = 2               # lesion A: 4 x 10 x 10 = 400 voxels
    arr[3:5, 30:35, 40:48] = 2               # lesion B: 2 x 5 x 8 = 80 voxels
    return Volume(arr, spacing=SPACING, origin=(-20.0, 10.0, 5.0))


def test_known_lesions_volumes_diameters_and_burden():
    v = stats_view(_two_lesion_liver())
    assert v["tumor_count"] == 2
    assert v["liver_voxels"] == 20000 - 480 and v["tumor_voxels"] == 480
    assert v["liver_ml"] == f"{20000 * VOXEL_ML:.1f}" == "25.6"  # liver volume includes its tumours
    assert v["tumor_ml"] == f"{480 * VOXEL_ML:.2f}" == "0.61"
    assert v["burden_percent"] == "2.40"
    # Numbered by decreasing volume; diameter between voxel centres on one axial (k) slice.
    diam_a = math.hypot(9 * 0.8, 9 * 0.8)    # 10.18 mm corner to corner
    diam_b = math.hypot(7 * 0.8, 4 * 0.8)    # 6.45 mm
    assert v["lesions"] == [
        {"index": 1, "volume_ml": f"{400 * VOXEL_ML:.2f}", "diameter_mm": f"{diam_a:.1f}"},
        {"index": 2, "volume_ml": f"{80 * VOXEL_ML:.2f}", "diameter_mm": f"{diam_b:.1f}"},
    ]
    assert [l["diameter_mm"] for l in v["lesions"]] == ["10.2", "6.4"]


def test_touching_lesion_voxels_count_as_one_lesion():
    lab = _two_lesion_liver()
    arr = lab.array.copy()
    arr[5, 20, 20] = 2  # touches lesion A only at a corner: 26-connected, so still one lesion
    v = stats_view(lab.with_array(arr))
    assert v["tumor_count"] == 2 and len(v["lesions"]) == 2


def test_no_tumour_and_empty_labelmaps():
    lab = _two_lesion_liver()
    arr = lab.array.copy()
    arr[arr == 2] = 1
    v = stats_view(lab.with_array(arr))
    assert (v["tumor_count"], v["lesions"], v["burden_percent"], v["tumor_ml"]) == (0, [], "0.00", "0.00")
    assert v["liver_ml"] == "25.6"
    empty = stats_view(lab.with_array(np.zeros_like(arr)))
    assert empty["liver_ml"] == "0.0" and empty["lesions"] == []
    assert set(empty_stats()) == set(v)  # the placeholder has every key the page reads


@pytest.mark.parametrize("seed", [4, 11])
def test_phantom_with_lesions_is_consistent(seed):
    _, lab = make_phantom(seed, shape_kji=(40, 96, 96), orientation="oblique", fov="full", n_lesions=3)
    v = stats_view(lab)
    n_tumor = int(np.count_nonzero(lab.array == 2))
    n_liver = int(np.count_nonzero(lab.array == 1))
    assert n_tumor > 0 and v["tumor_voxels"] == n_tumor and v["liver_voxels"] == n_liver
    assert v["tumor_count"] == len(v["lesions"]) >= 1
    assert [l["index"] for l in v["lesions"]] == list(range(1, len(v["lesions"]) + 1))
    vols = [float(l["volume_ml"]) for l in v["lesions"]]
    assert vols == sorted(vols, reverse=True)
    voxel_ml = float(np.prod(lab.spacing)) / 1000
    assert sum(vols) == pytest.approx(n_tumor * voxel_ml, abs=0.006 * len(vols))
    assert float(v["burden_percent"]) == pytest.approx(100 * n_tumor / (n_tumor + n_liver), abs=0.006)
    for l in v["lesions"]:
        # A lesion's longest axial diameter is positive and no longer than the scan's in-plane diagonal.
        assert 0 < float(l["diameter_mm"]) <= math.hypot(96 * lab.spacing[0], 96 * lab.spacing[1])
