"""Synthetic phantom: determinism, exact labels, anatomy and geometry invariants."""
from __future__ import annotations

import numpy as np
import pytest

from LiverCTSegmentationLib.synthetic.phantom import PHASES, _geometry, make_phantom
from LiverCTSegmentationLib.synthetic.phantom_anatomy import Anatomy

SMALL = dict(shape_kji=(48, 96, 112), spacing=(3.2, 3.2, 5.0))  # ~360x310x240 mm, fast


def _phys(vol, mask):
    kji = np.argwhere(mask)
    return vol.physical_points(kji[:, ::-1].astype(float))


def test_deterministic_and_seed_dependent():
    a_ct, a_lab = make_phantom(3, **SMALL)
    b_ct, b_lab = make_phantom(3, **SMALL)
    c_ct, c_lab = make_phantom(4, **SMALL)
    assert np.array_equal(a_ct.array, b_ct.array) and np.array_equal(a_lab.array, b_lab.array)
    assert a_ct.same_grid(b_ct)
    assert not np.array_equal(a_ct.array, c_ct.array)
    assert not np.array_equal(a_lab.array, c_lab.array)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_types_labels_and_grid(seed):
    ct, lab = make_phantom(seed, **SMALL)
    assert ct.array.dtype == np.int16 and lab.array.dtype == np.uint8
    assert ct.same_grid(lab) and ct.array.shape == SMALL["shape_kji"]
    assert set(np.unique(lab.array)) <= {0, 1, 2}
    assert (lab.array == 1).sum() * lab.voxel_volume_mm3 > 500e3  # a liver of > 0.5 L
    assert ct.array.min() >= -1024 and ct.array.max() > 300  # air and bone present


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_tumours_inside_liver(seed):
    from scipy import ndimage
    from scipy.spatial import Delaunay

    ct, lab = make_phantom(seed, n_lesions=4, fov="full", shape_kji=(60, 128, 144), spacing=(2.5, 2.5, 4.0))
    lb = lab.array
    tum = lb == 2
    assert tum.any()
    # Every voxel touching a tumour (6-neighbourhood) is liver or tumour: lesions lie inside the liver.
    ring = ndimage.binary_dilation(tum) & ~tum
    assert np.all(lb[ring] == 1)
    # And tumour voxels are inside the convex hull of the liver.
    liver_pts = np.argwhere(lb == 1)
    hull = Delaunay(liver_pts[np.unique(np.concatenate([[liver_pts[:, a].argmin(), liver_pts[:, a].argmax()] for a in range(3)] + [np.arange(0, len(liver_pts), 7)]))])
    assert np.all(hull.find_simplex(np.argwhere(tum)) >= 0)


@pytest.mark.parametrize("phase", PHASES)
def test_hu_ranges_and_confounders(phase):
    ct, lab = make_phantom(11, contrast=phase, fov="full", noise=10, shape_kji=(70, 112, 128), spacing=(2.8, 2.8, 3.5))
    a = ct.array.astype(float)
    liver = a[lab.array == 1].mean()
    assert 40 <= liver <= 160
    meta = ct.metadata["phantom"]
    assert meta["contrast"] == phase
    lps_to_ijk = np.linalg.inv(ct.direction @ np.diag(ct.spacing))
    for organ in ("spleen", "kidney_left"):
        ijk = np.rint(lps_to_ijk @ (np.array(meta["organs_lps"][organ]) - ct.origin)).astype(int)
        k, j, i = ijk[::-1]
        patch = a[k, j - 1:j + 2, i - 1:i + 2]
        assert patch.size == 9, organ
        # Liver-like soft tissue: a plain threshold cannot separate it from the liver.
        assert abs(patch.mean() - liver) < 70, (organ, patch.mean(), liver)
    assert (a > 300).sum() > 100  # bone
    assert (a < -700)[lab.array == 0].sum() > 1000  # air, lung or bowel gas


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "oblique"])
@pytest.mark.parametrize("seed", [0, 8])
def test_liver_on_patient_right(orientation, seed):
    ct, lab = make_phantom(seed, orientation=orientation, fov="full", **SMALL)
    liver_x = _phys(lab, lab.array >= 1)[:, 0].mean()
    body = ct.array > -500
    body_x = _phys(ct, body)[:, 0].mean()
    # LPS: +x is the patient's left, so the liver (patient right) has the smaller x.
    assert liver_x < body_x - 20, (liver_x, body_x)
    assert abs(body_x - ct.metadata["phantom"]["body_centre_lps"][0]) < 15
    if orientation == "RAS":
        assert np.allclose(ct.direction, np.diag([-1, -1, 1]))
        # Array column i grows towards the patient's right: liver in the high-i half.
        cols = np.nonzero(lab.array)[2]
        assert cols.mean() > ct.array.shape[2] / 2
    elif orientation == "LPS":
        assert np.allclose(ct.direction, np.eye(3))
        assert np.nonzero(lab.array)[2].mean() < ct.array.shape[2] / 2
    else:
        assert ct.is_oblique()
        angle = np.degrees(np.arccos((np.trace(ct.direction) - 1) / 2))
        assert 3 - 1e-6 <= angle <= 15 + 1e-6


def _resample_nn(moving, reference):
    import SimpleITK as sitk

    out = sitk.Resample(moving.to_sitk(), reference.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(out)


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_same_physical_anatomy_across_orientations():
    _, lps = make_phantom(21, orientation="LPS", fov="full", **SMALL)
    _, ras = make_phantom(21, orientation="RAS", fov="full", **SMALL)
    assert not np.array_equal(lps.array, ras.array)  # the arrays are flipped...
    on_lps = _resample_nn(ras, lps)  # ...but the anatomy is the same
    assert _dice(on_lps >= 1, lps.array >= 1) > 0.97
    assert _dice(on_lps == 2, lps.array == 2) > 0.9 or (lps.array == 2).sum() == 0
    # A flipped-axis bug would mirror the liver to the other side: Dice would collapse.
    assert _dice(lps.array[:, ::-1, ::-1] >= 1, lps.array >= 1) < 0.7
    _, obl = make_phantom(21, orientation="oblique", fov="full", **SMALL)
    assert _dice(_resample_nn(obl, lps) >= 1, lps.array >= 1) > 0.85


def test_partial_fov_cuts_liver():
    cuts = set()
    for seed in range(6):
        _, lab = make_phantom(seed, orientation="LPS", fov="partial", **SMALL)
        liver = lab.array >= 1
        meta = lab.metadata["phantom"]
        assert meta["fov"] == "partial"
        end = liver[-1] if meta["fov_cut"] == "top" else liver[0]
        assert end.sum() > 20, (seed, meta["fov_cut"])
        cuts.add(meta["fov_cut"])
    assert cuts == {"top", "bottom"}
    _, full = make_phantom(0, orientation="LPS", fov="full", shape_kji=(60, 96, 112), spacing=(3.2, 3.2, 4.0))
    assert full.array[0].max() == 0 and full.array[-1].max() == 0


@pytest.mark.parametrize("n", [0, 1, 3, 6])
def test_lesion_count_and_size(n):
    from scipy import ndimage

    ct, lab = make_phantom(30 + n, n_lesions=n, fov="full", orientation="LPS", shape_kji=(60, 112, 128),
                           spacing=(2.8, 2.8, 4.0))
    meta = lab.metadata["phantom"]
    assert meta["n_lesions"] == len(meta["lesions"]) <= n
    assert meta["n_lesions"] >= min(n, 1)
    for le in meta["lesions"]:
        assert 5.0 <= le["diameter_mm"] <= 40.0
        assert le["kind"] in ("hypo", "hyper")
    comps, count = ndimage.label(lab.array == 2)
    assert count <= meta["n_lesions"]
    if n == 0:
        assert count == 0
    for c in range(1, count + 1):
        pts = _phys(lab, comps == c)
        extent = np.linalg.norm(pts.max(0) - pts.min(0))
        assert extent <= 40.0 + np.linalg.norm(lab.spacing), extent
    assert all(0 <= Anatomy(s).n_lesions <= 6 for s in range(30))


def test_default_geometry_ranges():
    orients, partial = set(), 0
    for seed in range(40):
        anat = Anatomy(seed)
        anat.build_liver_contents()
        shape, spacing, direction, _, _, info = _geometry(seed, anat, None, None, "random", "random")
        assert 0.6 <= spacing[0] == spacing[1] <= 1.0
        assert 1.0 <= spacing[2] <= 5.0
        fov = np.array(shape[::-1]) * np.array(spacing)
        assert 330 <= fov[0] <= 370 and 260 <= fov[1] <= 300 and 145 <= fov[2] <= 255, fov
        orients.add(info["orientation"])
        partial += info["fov"] == "partial"
        assert np.allclose(direction @ direction.T, np.eye(3))
    assert orients == {"LPS", "RAS", "oblique"}
    assert 3 <= partial <= 25


def test_noise_level_and_contrast_option():
    ct, lab = make_phantom(2, noise=20, contrast="portal", fov="full", **SMALL)
    liver = ct.array[lab.array == 1].astype(float)
    assert 10 < liver.std() < 45
    with pytest.raises(ValueError):
        make_phantom(2, contrast="bogus", **SMALL)
    with pytest.raises(ValueError):
        make_phantom(2, orientation="XYZ", **SMALL)


def test_bundled_sample(repo_root):
    import SimpleITK as sitk

    folder = repo_root / "LiverCTSegmentation" / "Resources" / "Samples"
    ct_path, lab_path = folder / "phantom_ct.nii.gz", folder / "phantom_label.nii.gz"
    assert ct_path.exists() and lab_path.exists(), "run scripts/make_sample.py"
    assert ct_path.stat().st_size < 3.2e6
    ct, lab = sitk.ReadImage(str(ct_path)), sitk.ReadImage(str(lab_path))
    assert np.allclose(ct.GetDirection(), np.eye(3).ravel())
    a, l = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(lab)
    assert a.dtype == np.int16 and a.shape == l.shape
    assert set(np.unique(l)) == {0, 1, 2}
