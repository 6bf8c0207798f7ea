"""Input checks: each rejection and warning on small synthetic images, and real CTs pass."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from LiverCTSegmentationLib.engine import io
from LiverCTSegmentationLib.engine.checks import check_volume, estimate_peak_bytes
from LiverCTSegmentationLib.engine.errors import InputError, ResourceError
from LiverCTSegmentationLib.engine.volume import Volume

BIG_MEMORY = 1 << 40


def body_ct(shape=(40, 64, 64), spacing=(1.5, 1.5, 4.0), seed=0, direction=np.eye(3)) -> Volume:
    """Air around an elliptic 'abdomen': fat rim, soft tissue, a bright spine; int16 HU."""
    k, j, i = shape
    rng = np.random.default_rng(seed)
    jj, ii = np.mgrid[0:j, 0:i]
    r = ((ii - i / 2) / (0.4 * i)) ** 2 + ((jj - j / 2) / (0.3 * j)) ** 2
    sl = np.full((j, i), -1000.0)
    sl[r < 1.0] = -100.0
    sl[r < 0.8] = 45.0
    sl[(np.abs(ii - i / 2) < i / 16) & (np.abs(jj - 0.7 * j) < j / 16)] = 700.0
    arr = np.repeat(sl[None], k, axis=0) + rng.normal(0, 15, size=shape)
    return Volume(arr.astype(np.int16), spacing, (0.0, 0.0, 0.0), direction)


def check(vol: Volume) -> list[str]:
    return check_volume(vol, available_bytes=BIG_MEMORY)


def test_body_phantom_passes_without_warnings() -> None:
    assert check(body_ct()) == []


@pytest.mark.parametrize("meta,match", [({"dimension": 2}, "2D"), ({"dimension": 4}, "4D"),
                                        ({"components": 3}, "components")])
def test_structure_rejections(meta: dict, match: str) -> None:
    vol = body_ct()
    vol.metadata.update(meta)
    with pytest.raises(InputError, match=match):
        check(vol)


def test_rgb_array_and_2d_file_from_reader(tmp_path: Path) -> None:
    rgb = Volume(np.zeros((20, 20, 20, 3), np.uint8))
    with pytest.raises(InputError, match="components"):
        check(rgb)
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((30, 30), np.int16)), str(tmp_path / "slice.nrrd"))
    with pytest.raises(InputError, match="2D"):
        check(io.read_volume(tmp_path / "slice.nrrd"))


@pytest.mark.parametrize("shape,match", [((0, 64, 64), "empty"), ((1, 1, 1), "too small"), ((40, 64, 5), "too small")])
def test_empty_and_tiny(shape, match: str) -> None:
    with pytest.raises(InputError, match=match):
        check(Volume(np.zeros(shape, np.int16)))


def test_constant_image() -> None:
    with pytest.raises(InputError, match="same value"):
        check(Volume(np.full((20, 20, 20), -1000, np.int16)))


def test_nan_and_inf() -> None:
    vol = body_ct()
    arr = vol.array.astype(np.float32)
    arr[7, 11, 13] = np.nan
    with pytest.raises(InputError, match="1 NaN/infinite"):
        check(vol.with_array(arr))
    arr[7, 11, 13] = np.inf
    with pytest.raises(InputError, match="NaN/infinite"):
        check(vol.with_array(arr))
    # a float CT with finite values is fine
    assert check(vol.with_array(vol.array.astype(np.float32))) == []


@pytest.mark.parametrize("spacing,match", [((0.0, 1, 1), "invalid voxel spacing"), ((-1.0, 1, 1), "invalid"),
                                           ((float("nan"), 1, 1), "invalid"), ((0.01, 0.01, 0.01), "implausible"),
                                           ((1.0, 1.0, 30.0), "implausible")])
def test_bad_spacing(spacing, match: str) -> None:
    vol = body_ct()
    vol.spacing = spacing
    with pytest.raises(InputError, match=match):
        check(vol)


def test_degenerate_direction() -> None:
    vol = body_ct()
    vol.direction = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    with pytest.raises(InputError, match="orientation"):
        check(vol)


def test_mr_like_intensities() -> None:
    vol = body_ct()
    # MR magnitude images are non-negative (0..~3500 here): no air near -1000, no fat below 0.
    mr = np.clip((vol.array.astype(np.float32) + 1000.0) * 2.0, 0, None)
    with pytest.raises(InputError, match="does not look like CT"):
        check(vol.with_array(mr.astype(np.int16)))


def test_ct_without_rescale_intercept_is_explained() -> None:
    vol = body_ct()
    raw = (vol.array.astype(np.int32) + 1024).clip(0, None).astype(np.uint16)
    with pytest.raises(InputError, match="RescaleIntercept"):
        check(vol.with_array(raw))


def test_eight_bit_and_normalised_images() -> None:
    vol = body_ct()
    eight = ((vol.array.astype(np.float32) + 1000) / 1700 * 255).clip(0, 255).astype(np.uint8)
    with pytest.raises(InputError, match="8-bit"):
        check(vol.with_array(eight))
    norm = ((vol.array.astype(np.float32) - 50) / 125).astype(np.float32)
    with pytest.raises(InputError, match="normalised"):
        check(vol.with_array(norm))


def test_padding_outside_fov_is_accepted() -> None:
    vol = body_ct()
    arr = vol.array.copy()
    arr[:, :6, :] = -3024
    arr[:, -6:, :] = -2048
    assert check(vol.with_array(arr)) == []


def test_no_body_in_field_of_view() -> None:
    arr = np.random.default_rng(0).normal(-1000, 10, size=(40, 64, 64))
    arr[18:22, 30:33, 30:33] = 40  # a tiny object
    with pytest.raises(InputError, match="no abdomen"):
        check(Volume(arr.astype(np.int16), (1.0, 1.0, 1.0)))


def test_memory_limit_raises_resource_error_before_work() -> None:
    vol = body_ct()
    need = estimate_peak_bytes(vol.array.shape)
    assert need > vol.array.nbytes
    with pytest.raises(ResourceError, match="memory"):
        check_volume(vol, available_bytes=need - 1)
    with pytest.raises(ResourceError, match="memory"):
        check_volume(vol, max_bytes=need - 1, available_bytes=BIG_MEMORY)
    assert check_volume(vol, max_bytes=need + 1, available_bytes=BIG_MEMORY) == []
    # a huge image is refused from its shape alone (a broadcast view, no real allocation)
    huge = Volume(np.broadcast_to(np.int16(0), (4000, 4000, 4000)))
    with pytest.raises(ResourceError):
        check_volume(huge, available_bytes=64 << 30)


def test_warnings_oblique_anisotropic_partial() -> None:
    rot = Rotation.from_euler("x", 20, degrees=True).as_matrix()
    w = check(body_ct(direction=rot))
    assert any("oblique" in s for s in w)
    w = check(body_ct(spacing=(0.7, 0.7, 8.0)))
    assert any("anisotropic" in s for s in w) and any("Unusual voxel spacing" in s for s in w)
    w = check(body_ct(shape=(10, 64, 64), spacing=(6.0, 6.0, 5.0)))
    assert any("covers only 50 mm" in s for s in w)
    full = body_ct()
    cropped = Volume(np.ascontiguousarray(full.array[:, 16:48, 10:54]), full.spacing)
    assert any("touches the image border" in s for s in check(cropped))


def test_reader_warnings_are_passed_on() -> None:
    vol = body_ct()
    vol.metadata["warnings"] = ["several series"]
    assert check(vol) == ["several series"]


def test_large_volume_is_fast() -> None:
    rng = np.random.default_rng(0)
    small = body_ct(shape=(30, 512, 512), spacing=(0.7, 0.7, 1.0)).array
    arr = np.concatenate([small] * 10, axis=0)  # 512x512x300 int16
    arr[::7] += rng.integers(-5, 5, size=(1, 512, 512), dtype=np.int16)
    vol = Volume(arr, (0.7, 0.7, 1.0))
    check(vol)  # warm-up
    t = time.perf_counter()
    check(vol)
    assert time.perf_counter() - t < 0.2


def test_real_cts_pass(real_data_dir: Path) -> None:
    files = sorted(real_data_dir.glob("*_ct.nii.gz"))
    assert files
    for f in files:
        warnings = check_volume(io.read_volume(f))
        assert all(isinstance(w, str) for w in warnings)


def _mr_body(soft: float = 1250.0) -> Volume:
    """T1-like MR of body_ct's anatomy: dark background, bright fat, soft tissue near ``soft``, dark bone."""
    vol = body_ct()
    hu = vol.array.astype(np.float32)
    mr = np.where(hu < -500, 0.0, np.where(hu < -50, 1900.0, np.where(hu < 300, soft, 300.0)))
    mr = mr + np.abs(np.random.default_rng(1).normal(0, 25, size=mr.shape))
    return vol.with_array(mr.astype(np.int16))


def test_mr_is_not_told_to_apply_a_rescale_intercept() -> None:
    # Soft tissue at 1250 and background near 0 used to read as "raw CT without the intercept".
    with pytest.raises(InputError, match="looks like MR") as err:
        check(_mr_body())
    assert "RescaleIntercept" not in str(err.value) and "Hounsfield" in str(err.value)


def test_dicom_mr_series_is_refused_as_mr(tmp_path: Path) -> None:
    from LiverCTSegmentationLib.engine.dicom import read_dicom_series, write_dicom_series

    write_dicom_series(_mr_body(soft=1050.0), tmp_path / "mr", modality="MR")
    with pytest.raises(InputError, match=r"MR series.*Modality 'MR'.*CT series") as err:
        check(read_dicom_series(tmp_path / "mr"))
    assert "RescaleIntercept" not in str(err.value)
    vol = body_ct()
    write_dicom_series(vol, tmp_path / "ct")
    assert check(read_dicom_series(tmp_path / "ct")) == []
