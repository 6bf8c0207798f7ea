"""Inputs whose voxel grid cannot hold a correctly placed result are refused before segmentation.

Sheared direction matrices (NRRD, NIfTI sform), gantry-tilted DICOM series and
series with a damaged slice used to be read as a plausible but wrong grid (ITK
silently orthogonalises, stretches or drops slices). Each case here must end in
an `InputError` that names the problem, and valid grids must still pass.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from LiverCTSegmentationLib.engine import io
from LiverCTSegmentationLib.engine.checks import check_volume
from LiverCTSegmentationLib.engine.dicom import read_dicom_series, write_dicom_series
from LiverCTSegmentationLib.engine.errors import InputError, OutputError
from LiverCTSegmentationLib.engine.volume import Volume
from test_checks import BIG_MEMORY, body_ct


def _sheared_nrrd(tmp_path: Path, shear: float) -> Path:
    src = io.write_volume(body_ct(), tmp_path / "src.nrrd")
    text = src.read_bytes()
    assert b"(0,1.5,0)" in text
    p = tmp_path / f"shear_{shear}.nrrd"
    p.write_bytes(text.replace(b"(0,1.5,0)", f"({1.5 * shear:g},1.5,0)".encode(), 1))
    return p


def test_sheared_nrrd_is_refused_before_segmentation(tmp_path: Path) -> None:
    vol = io.read_volume(_sheared_nrrd(tmp_path, 0.1))
    assert abs(abs(np.linalg.det(vol.direction)) - 1.0) < 1e-2  # what the old determinant check accepted
    with pytest.raises(InputError, match=r"sheared.*84\.3°.*[Rr]esample"):
        check_volume(vol, available_bytes=BIG_MEMORY)


def test_tiny_float_noise_in_direction_is_not_shear() -> None:
    vol = body_ct()
    vol.direction = np.eye(3) + np.float32(1e-7)  # float32 rounding in a real header
    check_volume(vol, available_bytes=BIG_MEMORY)


def test_sheared_grid_is_not_written_as_nifti(tmp_path: Path) -> None:
    # ITK's NIfTI writer would orthogonalise the matrix and move the far corner by millimetres.
    vol = io.read_volume(_sheared_nrrd(tmp_path, 0.1))
    with pytest.raises(OutputError, match="sheared"):
        io.write_volume(vol, tmp_path / "label.nii.gz")
    back = io.read_volume(io.write_volume(vol, tmp_path / "label.nrrd"))  # NRRD keeps the exact matrix
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)


def test_nifti_with_sheared_sform_is_refused(tmp_path: Path) -> None:
    # ITK falls back to the qform (with a raw WARNING) while sform-based viewers show the shear.
    import nibabel as nib

    aff = np.array([[-0.8, 0.1, 0, 10], [0, -0.9, 0, 20], [0, 0, 2.5, -30], [0, 0, 0, 1]])
    img = nib.Nifti1Image(np.zeros((12, 10, 8), np.int16), aff)
    img.set_sform(aff, 1)
    img.set_qform(np.diag([-0.8, -0.9, 2.5, 1]), 1)
    nib.save(img, str(tmp_path / "shear.nii"))
    with pytest.raises(InputError, match=r"sform.*sheared"):
        io.read_volume(tmp_path / "shear.nii")


# ---------------------------------------------------------------------- DICOM
def _ct(n: int = 30) -> Volume:
    arr = np.random.default_rng(0).integers(-1000, 1000, size=(n, 16, 20)).astype(np.int16)
    return Volume(arr, (0.7, 0.7, 3.0), (-10.0, -20.0, -100.0))


def _tilt(files: list[Path], degrees: float, step: float = 3.0) -> None:
    """Shift each slice along the column direction as a tilted gantry does (same orientation)."""
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        pos = [float(x) for x in ds.ImagePositionPatient]
        pos[1] += step * k * np.tan(np.radians(degrees))
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.save_as(f)


def test_gantry_tilted_series_is_refused(tmp_path: Path) -> None:
    _tilt(write_dicom_series(_ct(), tmp_path / "tilt"), 20.0)
    with pytest.raises(InputError, match=r"gantry tilt of 20\.0°.*dcm2niix"):
        read_dicom_series(tmp_path / "tilt")


def test_sideways_jittered_slices_are_refused(tmp_path: Path) -> None:
    files = write_dicom_series(_ct(10), tmp_path / "jit")
    ds = pydicom.dcmread(files[4])
    pos = [float(x) for x in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [f"{pos[0] + 2.0:.6f}", f"{pos[1]:.6f}", f"{pos[2]:.6f}"]
    ds.save_as(files[4])
    with pytest.raises(InputError, match=r"shifted sideways.*CT_\w+_0004\.dcm"):
        read_dicom_series(tmp_path / "jit")


def test_position_rounding_is_not_tilt(tmp_path: Path) -> None:
    files = write_dicom_series(_ct(10), tmp_path / "round")
    for k, f in enumerate(files):  # positions rounded to 0.01 mm in-plane, as some scanners write them
        ds = pydicom.dcmread(f)
        pos = [float(x) for x in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [f"{pos[0] + (0.004 if k % 2 else 0):.6f}", f"{pos[1]:.6f}", f"{pos[2]:.6f}"]
        ds.save_as(f)
    assert read_dicom_series(tmp_path / "round").array.shape == (10, 16, 20)


@pytest.mark.parametrize("where", [-1, 10])
@pytest.mark.parametrize("cut", [0.5, "10 bytes"])
def test_truncated_slice_is_named_not_dropped(tmp_path: Path, where: int, cut) -> None:
    files = write_dicom_series(_ct(), tmp_path / "ser")
    data = files[where].read_bytes()
    files[where].write_bytes(data[: len(data) // 2] if cut == 0.5 else data[:-10])
    with pytest.raises(InputError, match=rf"{files[where].name}.*(damaged|truncated)"):
        read_dicom_series(tmp_path / "ser")


def test_unrelated_files_beside_the_series_are_ignored(tmp_path: Path) -> None:
    vol = _ct(8)
    folder = tmp_path / "ser"
    write_dicom_series(vol, folder)
    (folder / "notes.txt").write_text("scanned on Monday")
    (folder / "thumbs.db").write_bytes(b"\0" * 300)
    np.testing.assert_array_equal(read_dicom_series(folder).array, vol.array)
