"""PNG overlay: radiological orientation independent of the file's direction matrix."""
from __future__ import annotations

import numpy as np
import pytest

from LiverCTSegmentationLib.engine.volume import Volume
from LiverCTSegmentationLib.batch.overlay import canonical_lps, save_overlay_png

mpimg = pytest.importorskip("matplotlib.image")


def _anatomy(shape_kji=(20, 40, 48), spacing=(2.0, 1.5, 3.0)):
    """LPS-identity CT and label with a 'liver' on the patient's RIGHT (small x),
    ANTERIOR (small y) and SUPERIOR (large z), plus a tumour inside it."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape_kji], indexing="ij")
    ct = np.full(shape_kji, -1000, np.int16)
    body = ((i - 24) / 22.0) ** 2 + ((j - 20) / 18.0) ** 2 < 1
    ct[body] = 40
    liver = body & (i < 18) & (j < 18) & (k > 8)
    ct[liver] = 120
    label = np.zeros(shape_kji, np.uint8)
    label[liver] = 1
    tumour = liver & (abs(i - 10) < 3) & (abs(j - 10) < 3) & (abs(k - 14) < 3)
    label[tumour] = 2
    ct[tumour] = 30
    vol = Volume(ct, spacing, (-30.0, -20.0, 10.0), np.eye(3))
    return vol, vol.with_array(label)


def _flip(vol: Volume, axes_ijk: tuple[int, ...]) -> Volume:
    """Same physical image stored with the given voxel axes reversed."""
    arr = vol.array
    direction = vol.direction.copy()
    origin = np.array(vol.origin, float)
    for v in axes_ijk:
        n = vol.array.shape[2 - v]
        origin = origin + direction[:, v] * vol.spacing[v] * (n - 1)
        direction[:, v] *= -1
        arr = np.flip(arr, axis=2 - v)
    return Volume(np.ascontiguousarray(arr), vol.spacing, tuple(origin), direction)


def _permute_ij(vol: Volume) -> Volume:
    """Same physical image stored with i and j swapped (a transposed in-plane grid)."""
    arr = np.ascontiguousarray(np.swapaxes(vol.array, 1, 2))
    d = vol.direction[:, [1, 0, 2]]
    sp = (vol.spacing[1], vol.spacing[0], vol.spacing[2])
    return Volume(arr, sp, vol.origin, d)


@pytest.mark.parametrize("variant", ["ras", "k_flipped", "all_flipped", "ij_swapped"])
def test_canonical_is_orientation_independent(variant):
    ct, lab = _anatomy()
    ref, ref_sp = canonical_lps(ct)
    if variant == "ras":
        other = _flip(ct, (0, 1))
    elif variant == "k_flipped":
        other = _flip(ct, (2,))
    elif variant == "all_flipped":
        other = _flip(ct, (0, 1, 2))
    else:
        other = _permute_ij(_flip(ct, (0,)))
    got, sp = canonical_lps(other)
    np.testing.assert_array_equal(got, ref)
    assert sp == pytest.approx(ref_sp)


def test_axial_panel_shows_patient_right_on_image_left():
    ct, lab = _anatomy()
    can, _ = canonical_lps(ct, lab.array)
    # canonical axes are (S, P, L): small L index = patient right = image left in the axial panel.
    liver_cols = np.nonzero(can.any(axis=(0, 1)))[0]
    assert liver_cols.max() < can.shape[2] / 2
    # anterior (small P) = top rows
    liver_rows = np.nonzero(can.any(axis=(0, 2)))[0]
    assert liver_rows.max() < can.shape[1] / 2


def _png(tmp_path, name, ct, lab):
    p = save_overlay_png(ct, lab, tmp_path / f"{name}.png", title="orientation test",
                         statistics={"liver_ml": 12.5, "tumor_count": 1, "tumor_ml": 0.4, "burden_percent": 3.2})
    return mpimg.imread(str(p))


def test_png_identical_for_lps_and_ras_inputs(tmp_path):
    ct, lab = _anatomy()
    a = _png(tmp_path, "lps", ct, lab)
    b = _png(tmp_path, "ras", _flip(ct, (0, 1)), _flip(lab, (0, 1)))
    c = _png(tmp_path, "kflip", _flip(ct, (2,)), _flip(lab, (2,)))
    assert a.shape[2] in (3, 4) and a.shape[0] > 200
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    # ...and a genuinely mirrored anatomy (flip the array, keep the direction) looks different.
    mirrored = ct.with_array(np.ascontiguousarray(ct.array[:, :, ::-1]))
    mirrored_lab = lab.with_array(np.ascontiguousarray(lab.array[:, :, ::-1]))
    d = _png(tmp_path, "mirror", mirrored, mirrored_lab)
    assert not np.array_equal(a, d)
    assert not list(tmp_path.glob("*.tmp-*"))


def test_liver_contour_drawn_in_bundle_colour_on_image_left(tmp_path):
    ct, lab = _anatomy()
    img = _png(tmp_path, "c", ct, lab)[..., :3]
    liver_rgb = np.array([221, 130, 101]) / 255.0
    hits = np.all(np.abs(img - liver_rgb) < 0.04, axis=2)
    assert hits.sum() > 20, "liver contour colour not found"
    h, w = hits.shape
    axial = hits[int(h * 0.1):int(h * 0.9), : w // 3]  # first panel = axial
    cols = np.nonzero(axial.any(axis=0))[0]
    assert cols.size and cols.mean() < (w // 3) / 2, "liver should be on the image left in the axial view"


def test_empty_labelmap_and_shape_mismatch(tmp_path):
    ct, lab = _anatomy()
    empty = lab.with_array(np.zeros_like(lab.array))
    p = save_overlay_png(ct, empty, tmp_path / "empty.png")
    assert p.is_file() and p.stat().st_size > 1000
    with pytest.raises(ValueError):
        save_overlay_png(ct, Volume(np.zeros((2, 2, 2), np.uint8)), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
