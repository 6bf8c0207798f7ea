"""DICOM series: write -> read round trips, several series, missing and mixed slices."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy.spatial.transform import Rotation

from LiverCTSegmentationLib.engine import io
from LiverCTSegmentationLib.engine.dicom import read_dicom_series, write_dicom_series
from LiverCTSegmentationLib.engine.errors import InputError
from LiverCTSegmentationLib.engine.volume import Volume

OBLIQUE = Rotation.from_euler("xyz", [8, -15, 27], degrees=True).as_matrix()


def _ct(n_slices: int = 10, direction=np.eye(3), seed: int = 0) -> Volume:
    arr = np.random.default_rng(seed).integers(-1024, 1800, size=(n_slices, 16, 20)).astype(np.int16)
    return Volume(arr, (0.68, 0.74, 2.5), (-150.5, -170.25, -300.0), direction)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), OBLIQUE], ids=["lps", "ras", "oblique"])
@pytest.mark.parametrize("intercept", [0.0, -1024.0])
def test_round_trip_geometry_and_hu(tmp_path: Path, direction, intercept: float) -> None:
    vol = _ct(direction=direction)
    files = write_dicom_series(vol, tmp_path / "ser", rescale_intercept=intercept)
    assert len(files) == 10
    ds = pydicom.dcmread(files[3])
    assert ds.Modality == "CT" and float(ds.RescaleIntercept) == intercept
    assert len({pydicom.dcmread(f).SOPInstanceUID for f in files}) == 10
    back = io.read_volume(tmp_path / "ser")  # a folder goes through the DICOM reader
    np.testing.assert_array_equal(back.array, vol.array)  # rescale applied -> HU again
    assert back.array.dtype == np.int16
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-3)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-3)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-5)
    corner = np.array([[19, 15, 9]])
    np.testing.assert_allclose(back.physical_points(corner), vol.physical_points(corner), atol=1e-3)


def test_left_handed_volume_is_same_physical_image(tmp_path: Path) -> None:
    vol = _ct(direction=np.diag([1.0, 1.0, -1.0]))
    write_dicom_series(vol, tmp_path / "ser")
    back = read_dicom_series(tmp_path / "ser")
    np.testing.assert_array_equal(back.array, vol.array[::-1])
    ijk = np.array([[3, 4, 0]])
    np.testing.assert_allclose(back.physical_points(ijk), vol.physical_points(np.array([[3, 4, 9]])), atol=1e-3)


def test_slices_sorted_by_position_not_file_name(tmp_path: Path) -> None:
    vol = _ct()
    files = write_dicom_series(vol, tmp_path / "ser")
    # Rename so that alphabetical order is reversed relative to position.
    for f in files:
        f.rename(f.with_name(f"z{99 - int(f.stem[-4:]):03d}.dcm"))
    back = read_dicom_series(tmp_path / "ser")
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-3)


def test_two_series_picks_the_larger(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_dicom_series(_ct(6, seed=1), folder, series_uid="1.2.826.0.1.3680043.8.498.111")
    big = _ct(12, seed=2)
    write_dicom_series(big, folder, series_uid="1.2.826.0.1.3680043.8.498.222")
    back = read_dicom_series(folder)
    np.testing.assert_array_equal(back.array, big.array)
    assert back.metadata["dicom_series_id"].endswith("222")
    assert [o["n_slices"] for o in back.metadata["dicom_other_series"]] == [6]
    assert any("2 DICOM series" in w for w in back.metadata["warnings"])


def test_series_in_subfolder_is_found(tmp_path: Path) -> None:
    vol = _ct()
    write_dicom_series(vol, tmp_path / "study" / "series 1 é")
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "study").array, vol.array)


def test_missing_middle_slice_is_an_error(tmp_path: Path) -> None:
    files = write_dicom_series(_ct(10), tmp_path / "ser")
    files[5].unlink()
    with pytest.raises(InputError, match=r"gap of 5\.00 mm.*1 slice"):
        read_dicom_series(tmp_path / "ser")


def test_mixed_geometry_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "ser"
    files = write_dicom_series(_ct(8), folder, series_uid="1.2.826.0.1.3680043.8.498.333")
    ds = pydicom.dcmread(files[2])
    ds.PixelSpacing = ["0.9", "0.9"]
    ds.save_as(files[2])
    with pytest.raises(InputError, match="different pixel spacings"):
        read_dicom_series(folder)


def test_duplicate_positions_are_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "ser"
    files = write_dicom_series(_ct(8), folder)
    ds = pydicom.dcmread(files[3])
    ds.ImagePositionPatient = pydicom.dcmread(files[4]).ImagePositionPatient
    ds.save_as(files[3])
    with pytest.raises(InputError, match="same position"):
        read_dicom_series(folder)


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="No DICOM images"):
        io.read_volume(tmp_path)
    with pytest.raises(InputError, match="not found"):
        read_dicom_series(tmp_path / "absent")


def test_single_slice_is_an_error(tmp_path: Path) -> None:
    files = write_dicom_series(_ct(3), tmp_path / "ser")
    for f in files[1:]:
        f.unlink()
    with pytest.raises(InputError, match="only one slice"):
        read_dicom_series(tmp_path / "ser")


def test_non_ct_modality_is_warned(tmp_path: Path) -> None:
    write_dicom_series(_ct(), tmp_path / "ser", modality="MR")
    back = read_dicom_series(tmp_path / "ser")
    assert any("'MR'" in w for w in back.metadata["warnings"])


def test_real_ct_as_dicom_round_trip(tmp_path: Path, real_data_dir: Path) -> None:
    vol = io.read_volume(real_data_dir / "totalseg_example_sm_ct.nii.gz")
    write_dicom_series(vol, tmp_path / "ser", rescale_intercept=-1024.0)
    back = read_dicom_series(tmp_path / "ser")
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.same_grid(vol, atol=1e-3)
