"""The .nii.gz fast path (engine.nifti_gz): identical voxels, geometry and pixel type to ITK's own
reader, ITK for everything unusual or when ISA-L is missing, the parallel inflate (rapidgzip, used
on 4+ cores) likewise, and the same specific errors for damaged files on every path."""
from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from LiverCTSegmentationLib.engine import io
from LiverCTSegmentationLib.engine.errors import InputError
from LiverCTSegmentationLib.engine import nifti_gz
from LiverCTSegmentationLib.engine.volume import Volume

OBLIQUE = Rotation.from_euler("xyz", [12, -25, 33], degrees=True).as_matrix()


def read_nii_gz(path: Path):
    """The fast path alone, fed by io's header checks as read_volume feeds it."""
    gz = io._check_nifti(path)
    return nifti_gz.read_nii_gz(path, gz.header, gz.need)


def _same_as_itk(path: Path, vol: Volume) -> None:
    img = sitk.ReadImage(str(path))
    ref = sitk.GetArrayFromImage(img)
    assert vol.array.dtype == ref.dtype and vol.array.shape == ref.shape
    np.testing.assert_array_equal(vol.array, ref)
    assert tuple(vol.spacing) == img.GetSpacing() and tuple(vol.origin) == img.GetOrigin()
    np.testing.assert_array_equal(np.asarray(vol.direction), np.reshape(img.GetDirection(), (3, 3)))
    assert vol.metadata["pixel_type"] == img.GetPixelIDTypeAsString()
    assert vol.array.flags.writeable


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("direction", ["lps", "ras_like", "oblique"])
def test_fast_path_equals_itk_for_itk_written_files(tmp_path: Path, dtype, direction) -> None:
    rng = np.random.default_rng(1)
    arr = (rng.normal(0, 300, size=(7, 11, 13)) if np.dtype(dtype).kind == "f"
           else rng.integers(0, 200, size=(7, 11, 13))).astype(dtype)
    d = {"lps": np.eye(3), "ras_like": np.diag([-1.0, -1.0, 1.0]), "oblique": OBLIQUE}[direction]
    path = io.write_volume(Volume(arr, (0.71, 0.83, 2.5), (-101.5, 22.25, -300.0), d), tmp_path / "v.nii.gz")
    pytest.importorskip("isal")
    fast = read_nii_gz(path)
    assert fast is not None, "a plain 3D scalar .nii.gz must take the fast path"
    _same_as_itk(path, fast)
    _same_as_itk(path, io.read_volume(path))


def test_geometry_comes_from_itk_when_qform_and_sform_disagree(tmp_path: Path) -> None:
    # nibabel-written file whose sform and qform differ: whichever ITK picks, the fast path matches it.
    arr = np.arange(5 * 6 * 7, dtype=np.int16).reshape(7, 6, 5).T  # nibabel's (i, j, k) order
    sform = np.array([[-0.8, 0, 0, 90.0], [0, -0.9, 0, 120.0], [0, 0, 3.0, -50.0], [0, 0, 0, 1]])
    qform = sform.copy()
    qform[:3, 3] += [5.0, -7.0, 2.0]
    img = nib.Nifti1Image(arr, sform)
    img.set_sform(sform, code=2)
    img.set_qform(qform, code=1)
    path = tmp_path / "nib.nii.gz"
    nib.save(img, str(path))
    pytest.importorskip("isal")
    fast = read_nii_gz(path)
    assert fast is not None
    _same_as_itk(path, fast)


def test_scaled_and_big_endian_files_are_left_to_itk(tmp_path: Path) -> None:
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4).T
    scaled = nib.Nifti1Image(arr, np.diag([0.7, 0.7, 2.0, 1.0]))
    scaled.header.set_slope_inter(2.0, -1024.0)
    nib.save(scaled, str(tmp_path / "scaled.nii.gz"))
    big = nib.Nifti1Image(arr, np.diag([0.7, 0.7, 2.0, 1.0]), header=nib.Nifti1Header(endianness=">"))
    nib.save(big, str(tmp_path / "big.nii.gz"))
    assert nib.load(str(tmp_path / "big.nii.gz")).header.endianness == ">"
    for name in ("scaled", "big"):
        path = tmp_path / f"{name}.nii.gz"
        assert read_nii_gz(path) is None, name
        _same_as_itk(path, io.read_volume(path))
    assert io.read_volume(tmp_path / "scaled.nii.gz").array.dtype.kind == "f"  # ITK applied the scaling


@pytest.fixture
def parallel(monkeypatch):
    """The parallel inflate whatever this machine's core count (it is chosen on 4+ cores)."""
    pytest.importorskip("rapidgzip")
    monkeypatch.setattr(nifti_gz, "PARALLEL_MIN_CORES", 1)
    assert nifti_gz._rapidgzip() is not None


def test_parallel_inflate_equals_itk(tmp_path: Path, parallel) -> None:
    rng = np.random.default_rng(2)
    for dtype in (np.int16, np.uint8, np.float32, np.float64):
        for d in (np.eye(3), OBLIQUE):
            arr = (rng.normal(0, 300, size=(6, 9, 11)) if np.dtype(dtype).kind == "f"
                   else rng.integers(0, 200, size=(6, 9, 11))).astype(dtype)
            path = io.write_volume(Volume(arr, (0.71, 0.83, 2.5), (-101.5, 22.25, -300.0), d), tmp_path / "v.nii.gz",
                                   overwrite=True)
            fast = read_nii_gz(path)
            assert fast is not None
            _same_as_itk(path, fast)
    # Big enough (about 20 MB compressed) for rapidgzip to split the stream between threads.
    k, j, i = np.ogrid[:64, :512, :512]
    big = ((i + 2 * j + 3 * k) % 2000 - 1000 + rng.integers(-200, 200, size=(64, 512, 512))).astype(np.int16)
    path = io.write_volume(Volume(big, (0.8, 0.8, 1.0), (0, 0, 0), np.eye(3)), tmp_path / "big.nii.gz")
    assert path.stat().st_size > 12e6
    _same_as_itk(path, read_nii_gz(path))


@pytest.fixture(params=["isal", "no isal", "rapidgzip"])
def inflater(request, monkeypatch, block_imports):
    """Run a test with ISA-L (the fast path), with the parallel inflate, and with ISA-L's import blocked
    (ITK reads the file)."""
    if request.param == "isal":
        pytest.importorskip("isal")
        monkeypatch.setattr(nifti_gz, "PARALLEL_MIN_CORES", 1 << 20)
    elif request.param == "rapidgzip":
        pytest.importorskip("rapidgzip")
        monkeypatch.setattr(nifti_gz, "PARALLEL_MIN_CORES", 1)
    else:
        monkeypatch.setattr(nifti_gz, "PARALLEL_MIN_CORES", 1 << 20)
        block_imports("isal")
    return request.param


def test_both_paths_read_the_same_and_reject_damage_specifically(tmp_path: Path, inflater) -> None:
    rng = np.random.default_rng(5)
    vol = Volume(rng.integers(-1000, 1000, size=(9, 20, 24)).astype(np.int16), (0.7, 0.7, 3.0), (0, 0, 0), np.eye(3))
    path = io.write_volume(vol, tmp_path / "ok.nii.gz")
    assert (read_nii_gz(path) is not None) == (inflater != "no isal")
    _same_as_itk(path, io.read_volume(path))
    raw = path.read_bytes()
    bad_block = bytearray(raw)
    bad_block[12:20] = b"\xff" * 8  # inside the first deflate block header: an invalid block
    bad_crc = raw[:-8] + b"\0\0\0\0" + raw[-4:]
    for name, data in [("cut", raw[: len(raw) // 2]), ("block", bytes(bad_block)), ("crc", bad_crc)]:
        p = tmp_path / f"{name}.nii.gz"
        p.write_bytes(data)
        with pytest.raises(InputError, match="corrupted or truncated|header declares|not a valid NIfTI"):
            io.read_volume(p)


def test_gzip_trailer_intact_but_data_short_is_a_header_lie(tmp_path: Path) -> None:
    # A complete, valid gzip stream holding fewer bytes than the header declares.
    path = io.write_volume(Volume(np.zeros((4, 5, 6), np.int16), (1, 1, 1), (0, 0, 0), np.eye(3)), tmp_path / "a.nii.gz")
    data = gzip.decompress(path.read_bytes())
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(data[:-20]))
    with pytest.raises(InputError, match="header declares"):
        io.read_volume(tmp_path / "short.nii.gz")
