"""`prepare`: 3D-IRCADb-style DICOM masks and CHAOS-style PNG masks -> NIfTI pairs on the CT grid.

Phantom CTs are written as real DICOM series with engine.dicom.write_dicom_series;
the mask slices are written by the tests in each dataset's style, deliberately
with shuffled file names / reversed instance numbers / flipped PNG rows, and the
prepared label must equal the phantom truth voxel for voxel.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from LiverCTSegmentationLib.engine.dicom import write_dicom_series
from LiverCTSegmentationLib.engine.io import read_volume
from LiverCTSegmentationLib.synthetic.phantom import make_phantom
from liverct_training import prepare as P


def phantom(seed=1, orientation="LPS"):
    return make_phantom(seed, shape_kji=(16, 40, 44), spacing=(7.0, 6.5, 9.0), orientation=orientation,
                        fov="full", n_lesions=2)


def shuffle_names(folder: Path, seed: int) -> None:
    files = sorted(folder.iterdir())
    rng = np.random.default_rng(seed)
    for f, n in zip(files, rng.permutation(len(files))):
        f.rename(folder / f"IM{n:05d}")  # no extension, like IRCADb


def make_ircadb_patient(root: Path, ct, lab, name="3Dircadb1.1", tumors=True) -> Path:
    pdir = root / name
    write_dicom_series(ct, pdir / "PATIENT_DICOM", patient_id=name)
    shuffle_names(pdir / "PATIENT_DICOM", 1)
    liver = ct.with_array(((lab.array > 0) * 255).astype(np.int16))
    write_dicom_series(liver, pdir / "MASKS_DICOM" / "liver", patient_id=name)
    shuffle_names(pdir / "MASKS_DICOM" / "liver", 2)
    if tumors:
        tum = ct.with_array(((lab.array == 2) * 255).astype(np.int16))
        write_dicom_series(tum, pdir / "MASKS_DICOM" / "livertumor01", patient_id=name)
    # a structure we do not use must be ignored
    write_dicom_series(ct.with_array(np.zeros_like(ct.array)), pdir / "MASKS_DICOM" / "portalvein", patient_id=name)
    return pdir


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "oblique"])
def test_ircadb_masks_match_truth(tmp_path, orientation):
    ct, lab = phantom(2, orientation)
    assert (lab.array == 2).any()
    pdir = make_ircadb_patient(tmp_path / "src", ct, lab)
    ct2, lab2 = P.read_ircadb_patient(pdir)
    assert ct2.same_grid(ct, atol=1e-3) and ct2.same_grid(lab2)
    np.testing.assert_array_equal(lab2.array, (lab.array > 0).astype(np.uint8))
    _, lab3 = P.read_ircadb_patient(pdir, P.IRCADB_LIVER_TUMOR)
    np.testing.assert_array_equal(lab3.array, lab.array)


def test_prepare_command_ircadb(tmp_path):
    ct, lab = phantom(3)
    src = tmp_path / "src"
    make_ircadb_patient(src, ct, lab, "3Dircadb1.1")
    bad = make_ircadb_patient(src, ct, lab, "3Dircadb1.2", tumors=False)
    # move one mask slice half a slice: no longer on a CT slice -> that patient fails, the other is ok
    f = sorted((bad / "MASKS_DICOM" / "liver").iterdir())[3]
    ds = pydicom.dcmread(f)
    ipp = [float(v) for v in ds.ImagePositionPatient]
    ipp[2] += 4.5
    ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
    ds.save_as(f)
    out = tmp_path / "out"
    rc = P.main_prepare(["--format", "ircadb", "--input", str(src), "--output", str(out), "--with-tumors"])
    assert rc == 1
    man = json.loads((out / "prepare_manifest.json").read_text())
    status = {r["case_id"]: r for r in man["cases"]}
    assert status["ircadb-3Dircadb1.1"]["status"] == "ok"
    assert status["ircadb-3Dircadb1.2"]["status"] == "failed"
    assert "not on a CT slice" in status["ircadb-3Dircadb1.2"]["error"]
    img = read_volume(out / "images" / "ircadb-3Dircadb1.1.nii.gz")
    lab_out = read_volume(out / "labels" / "ircadb-3Dircadb1.1.nii.gz")
    assert img.same_grid(ct, atol=1e-3) and img.same_grid(lab_out, atol=1e-3)
    np.testing.assert_array_equal(img.array, ct.array)
    np.testing.assert_array_equal(lab_out.array, lab.array)
    # the output is a generic-layout dataset
    from liverct_training.datasets import read_generic

    assert [c.case_id for c in read_generic(out)] == ["ircadb-3Dircadb1.1"]
    # existing outputs are kept unless --overwrite
    rc = P.main_prepare(["--format", "ircadb", "--input", str(src / "3Dircadb1.1"), "--output", str(out)])
    assert rc == 0
    assert json.loads((out / "prepare_manifest.json").read_text())["cases"][0]["status"] == "skipped"


def test_ircadb_zipped_folders(tmp_path):
    ct, lab = phantom(4)
    pdir = make_ircadb_patient(tmp_path, ct, lab, tumors=False)
    for sub in ("PATIENT_DICOM", "MASKS_DICOM"):
        shutil.make_archive(str(pdir / sub), "zip", root_dir=pdir, base_dir=sub)
        shutil.rmtree(pdir / sub)
    _, lab2 = P.read_ircadb_patient(pdir)
    np.testing.assert_array_equal(lab2.array, (lab.array > 0).astype(np.uint8))


def make_chaos_patient(root: Path, ct, lab, flip_rows: bool) -> Path:
    """CHAOS style: DICOM_anon/ with InstanceNumber in REVERSE slice-position order and
    shuffled file names; Ground/liver_GT_XXX.png numbered in InstanceNumber order."""
    pdir = root / "1"
    dcm = pdir / "DICOM_anon"
    files = write_dicom_series(ct, dcm, patient_id="CHAOS1")
    n = len(files)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = n - int(ds.InstanceNumber) + 1
        ds.save_as(f)
    shuffle_names(dcm, 3)
    by_instance = sorted(dcm.iterdir(), key=lambda f: int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber))
    (pdir / "Ground").mkdir()
    normal = ct.direction[:, 2]
    for p, f in enumerate(by_instance):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        k = int(round((np.asarray([float(v) for v in ds.ImagePositionPatient]) - ct.origin) @ normal / ct.spacing[2]))
        m = ((lab.array[k] > 0) * 255).astype(np.uint8)
        if flip_rows:
            m = m[::-1, :]
        sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(m)), str(pdir / "Ground" / f"liver_GT_{p:03d}.png"))
    return pdir


def test_chaos_png_order_and_flip(tmp_path):
    ct, lab = phantom(5)
    truth = (lab.array > 0).astype(np.uint8)
    pdir = make_chaos_patient(tmp_path, ct, lab, flip_rows=True)
    ct2, good = P.read_chaos_patient(pdir, flip="vertical", png_order="instance")
    assert ct2.same_grid(ct, atol=1e-3) and ct2.same_grid(good)
    np.testing.assert_array_equal(good.array, truth)
    _, unflipped = P.read_chaos_patient(pdir, flip="none")
    assert not np.array_equal(unflipped.array, truth)
    np.testing.assert_array_equal(unflipped.array, truth[:, ::-1, :])
    _, by_position = P.read_chaos_patient(pdir, flip="vertical", png_order="position")
    np.testing.assert_array_equal(by_position.array, truth[::-1])  # pairing by position reverses k here
    hint = P.flip_hint(ct2, good)
    assert set(hint) == {"as_is", "vertical_flip"}
    with pytest.raises(P.PrepareError, match="flip"):
        P.read_chaos_patient(pdir, flip="diagonal")
    sorted((pdir / "Ground").iterdir())[-1].unlink()
    with pytest.raises(P.PrepareError, match="pair one to one"):
        P.read_chaos_patient(pdir, flip="vertical")


def test_chaos_via_command(tmp_path):
    ct, lab = phantom(6, "RAS")
    make_chaos_patient(tmp_path / "CT", ct, lab, flip_rows=False)
    out = tmp_path / "out"
    assert P.main_prepare(["--format", "chaos", "--input", str(tmp_path / "CT"), "--output", str(out)]) == 0
    got = read_volume(out / "labels" / "chaos-1.nii.gz")
    assert got.same_grid(ct, atol=1e-3)
    np.testing.assert_array_equal(got.array, (lab.array > 0).astype(np.uint8))


def test_prepare_wrong_layout(tmp_path):
    (tmp_path / "x").mkdir()
    assert P.main_prepare(["--format", "chaos", "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
