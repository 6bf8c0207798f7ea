"""Image file I/O: geometry round trips, damaged files, odd paths, atomic writes."""
from __future__ import annotations

import errno
import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from LiverCTSegmentationLib.engine import io
from LiverCTSegmentationLib.engine.errors import InputError, OutputError
from LiverCTSegmentationLib.engine.volume import Volume

OBLIQUE = Rotation.from_euler("xyz", [12, -25, 33], degrees=True).as_matrix()
DIRECTIONS = {"lps": np.eye(3), "ras_like": np.diag([-1.0, -1.0, 1.0]), "oblique": OBLIQUE}


def _vol(direction=np.eye(3), dtype=np.int16, seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1024, 2000, size=(9, 14, 17)).astype(dtype)
    return Volume(arr, (0.73, 0.81, 3.5), (-120.25, 33.5, -410.0), direction)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("orient", sorted(DIRECTIONS))
def test_round_trip_keeps_voxels_and_geometry(tmp_path: Path, ext: str, orient: str) -> None:
    vol = _vol(DIRECTIONS[orient])
    out = io.write_volume(vol, tmp_path / f"img{ext}")
    back = io.read_volume(out)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-5)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-5)
    assert back.metadata["source_path"] == str(out)
    assert [p.name for p in tmp_path.iterdir()] == [f"img{ext}"]  # no temp file left


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.uint16])
def test_pixel_type_is_kept(tmp_path: Path, dtype) -> None:
    vol = _vol(dtype=np.int16)
    vol = vol.with_array(np.abs(vol.array).astype(dtype))
    back = io.read_volume(io.write_volume(vol, tmp_path / "x.nrrd"))
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, vol.array)


def test_non_ascii_and_space_path(tmp_path: Path) -> None:
    folder = tmp_path / "Ünïcödé folder 肝臓 ct"
    vol = _vol(OBLIQUE)
    out = io.write_volume(vol, folder / "patient é 1.nii.gz")
    assert out.exists()
    back = io.read_volume(out)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.same_grid(vol)


def test_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        io.read_volume(tmp_path / "nope.nii.gz")
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"\x89PNG....")
    with pytest.raises(InputError, match="Unsupported file type"):
        io.read_volume(bad)
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        io.read_volume(empty)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_file_is_rejected(tmp_path: Path, ext: str) -> None:
    src = io.write_volume(_vol(), tmp_path / f"ok{ext}")
    data = src.read_bytes()
    bad = tmp_path / f"cut{ext}"
    bad.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match="cut"):
        io.read_volume(bad)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_corrupted_compressed_file_is_rejected(tmp_path: Path, ext: str) -> None:
    src = io.write_volume(_vol(), tmp_path / f"ok{ext}")
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = np.random.default_rng(1).integers(0, 256, 64, dtype=np.uint8).tobytes()
    bad = tmp_path / f"corrupt{ext}"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt"):
        io.read_volume(bad)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_wrong_magic_is_rejected(tmp_path: Path, ext: str) -> None:
    bad = tmp_path / f"fake{ext}"
    bad.write_bytes(b"this is a text file, not an image\n" * 50)
    with pytest.raises(InputError, match="fake"):
        io.read_volume(bad)


def test_nifti_header_declaring_more_data_than_present(tmp_path: Path) -> None:
    src = io.write_volume(_vol(), tmp_path / "ok.nii")
    data = bytearray(src.read_bytes())
    # NIfTI-1 dim[3] (number of slices) is a little-endian int16 at byte 46.
    assert struct.unpack_from("<h", data, 46)[0] == 9
    struct.pack_into("<h", data, 46, 90)
    (tmp_path / "lie.nii").write_bytes(bytes(data))
    with pytest.raises(InputError, match="header declares"):
        io.read_volume(tmp_path / "lie.nii")
    (tmp_path / "lie.nii.gz").write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(InputError, match="header declares"):
        io.read_volume(tmp_path / "lie.nii.gz")


def test_nifti_missing_fewer_bytes_than_its_header_size_is_still_truncated(tmp_path: Path) -> None:
    # The voxel data start at vox_offset (352): a file short by 100 bytes must count those 352.
    data = io.write_volume(_vol(), tmp_path / "ok.nii").read_bytes()
    (tmp_path / "short.nii").write_bytes(data[:-100])
    with pytest.raises(InputError, match="header declares"):
        io.read_volume(tmp_path / "short.nii")
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(InputError, match="header declares"):
        io.read_volume(tmp_path / "short.nii.gz")


def test_gz_header_declaring_impossible_size_is_refused_before_itk_allocates(tmp_path: Path, monkeypatch) -> None:
    # 30000 x 14 x 17 int16 = 14 MB declared from a ~4 kB .nii.gz: more than deflate can expand to,
    # so the header lies; the read must stop before ITK (which would allocate the declared size).
    import SimpleITK as sitk

    data = bytearray(io.write_volume(_vol(), tmp_path / "ok.nii").read_bytes())
    struct.pack_into("<h", data, 46, 30000)
    (tmp_path / "huge.nii.gz").write_bytes(gzip.compress(bytes(data)))
    monkeypatch.setattr(sitk, "ReadImage", lambda *a, **k: pytest.fail("ITK read a file whose header lies"))
    with pytest.raises(InputError, match="header declares"):
        io.read_volume(tmp_path / "huge.nii.gz")


def test_truncated_gz_stream_checked_beside_the_read_wins_over_itk(tmp_path: Path) -> None:
    # The full-stream check runs in a thread next to ITK's read; its specific message is the one raised.
    src = io.write_volume(_vol(), tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(src[: len(src) * 2 // 3])
    with pytest.raises(InputError, match="corrupted or truncated|header declares"):
        io.read_volume(tmp_path / "cut.nii.gz")


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_text_header_declaring_more_data_than_present(tmp_path: Path, ext: str) -> None:
    src = io.write_volume(_vol(), tmp_path / f"ok{ext}")
    data = src.read_bytes()
    key, old, new = (b"sizes: 17 14 9", b"sizes: 17 14 9", b"sizes: 17 14 90") if ext == ".nrrd" else \
        (b"DimSize = 17 14 9", b"DimSize = 17 14 9", b"DimSize = 17 14 90")
    assert key in data
    (tmp_path / f"lie{ext}").write_bytes(data.replace(old, new, 1))
    with pytest.raises(InputError, match="lie"):
        io.read_volume(tmp_path / f"lie{ext}")


def test_write_refuses_overwrite_unless_asked(tmp_path: Path) -> None:
    out = io.write_volume(_vol(seed=0), tmp_path / "x.nii.gz")
    with pytest.raises(OutputError, match="already exists"):
        io.write_volume(_vol(seed=1), out)
    io.write_volume(_vol(seed=1), out, overwrite=True)
    np.testing.assert_array_equal(io.read_volume(out).array, _vol(seed=1).array)
    with pytest.raises(OutputError, match="Unsupported output type"):
        io.write_volume(_vol(), tmp_path / "x.png")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user for chmod")
def test_unwritable_folder_gives_output_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            io.write_volume(_vol(), folder / "x.nii.gz")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_unwritable_folder_via_readonly_file_as_parent(tmp_path: Path) -> None:
    # Works as root too: a regular file cannot be a folder.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="Cannot create the folder"):
        io.write_volume(_vol(), blocker / "x.nii.gz")


def test_disk_full_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "replace", full)
    with pytest.raises(OutputError, match="disk is full"):
        io.write_volume(_vol(), tmp_path / "x.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_writer_failure_mid_write_leaves_nothing(tmp_path: Path) -> None:
    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match="disk is full"):
        io.atomic_write(tmp_path / "x.nii.gz", half_then_fail)
    assert list(tmp_path.iterdir()) == []


def test_real_ct_reads_with_geometry(real_data_dir: Path) -> None:
    vol = io.read_volume(real_data_dir / "totalseg_example_ct.nii.gz")
    assert vol.array.shape == (112, 101, 122) and vol.array.dtype == np.int16
    np.testing.assert_allclose(vol.spacing, (3.0, 3.0, 3.0), atol=1e-4)
    np.testing.assert_allclose(np.diag(vol.direction), (-1.0, -1.0, 1.0), atol=1e-4)


@pytest.mark.parametrize("ext", [".nhdr", ".mhd"])
def test_detached_header_formats(tmp_path: Path, ext: str) -> None:
    import SimpleITK as sitk

    vol = _vol(OBLIQUE)
    sitk.WriteImage(vol.to_sitk(), str(tmp_path / f"img{ext}"), True)
    back = io.read_volume(tmp_path / f"img{ext}")
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.same_grid(vol)
    data_files = [p for p in tmp_path.iterdir() if p.suffix != ext]
    assert len(data_files) == 1
    data_files[0].unlink()
    with pytest.raises(InputError, match="missing"):
        io.read_volume(tmp_path / f"img{ext}")


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nifti_with_invalid_pixdim_is_rejected(tmp_path: Path, bad: float, ext: str) -> None:
    # ITK would silently read these as 1 mm; the header itself must be checked.
    import nibabel as nib

    raw = tmp_path / "src.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 10), np.int16), np.diag([0.8, 0.8, 1.0, 1.0])), str(raw))
    data = bytearray(raw.read_bytes())  # nibabel's writer would "fix" pixdim, so patch the bytes
    struct.pack_into("<f", data, 76 + 4 * 2, bad)  # pixdim[2] (j spacing), NIfTI-1 header offset 76
    p = tmp_path / f"bad{ext}"
    p.write_bytes(gzip.compress(bytes(data)) if ext == ".nii.gz" else bytes(data))
    with pytest.raises(InputError, match="invalid voxel spacing"):
        io.read_volume(p)
    good = tmp_path / f"good{ext}"
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 10), np.int16), np.diag([0.8, 0.8, 1.0, 1.0])), str(good))
    assert io.read_volume(good).spacing == pytest.approx((0.8, 0.8, 1.0))


# ------------------------------------------------------------ format variants
def _nibabel_ct(tmp_path: Path, cls_name: str, name: str) -> tuple[Path, np.ndarray]:
    import nibabel as nib

    data = np.random.default_rng(3).integers(-1000, 1000, size=(12, 10, 8)).astype(np.int16)  # i, j, k
    aff = np.array([[-0.8, 0, 0, 10], [0, -0.9, 0, 20], [0, 0, 2.5, -30], [0, 0, 0, 1]])
    img = getattr(nib, cls_name)(data, aff)
    img.set_qform(aff, 1)
    img.set_sform(aff, 1)
    nib.save(img, str(tmp_path / name))
    return tmp_path / name, data


@pytest.mark.parametrize("name", ["ct2.nii", "ct2.nii.gz"])
def test_nifti2_reads_like_the_same_nifti1(tmp_path: Path, name: str) -> None:
    n2, data = _nibabel_ct(tmp_path, "Nifti2Image", name)
    n1, _ = _nibabel_ct(tmp_path, "Nifti1Image", "ct1.nii")
    vol, ref = io.read_volume(n2), io.read_volume(n1)
    np.testing.assert_array_equal(vol.array, data.T)
    assert vol.same_grid(ref, atol=1e-6)
    np.testing.assert_allclose(vol.origin, (-10.0, -20.0, -30.0))  # RAS (10, 20, -30) in LPS
    assert vol.metadata["source_path"] == str(n2)


def test_truncated_nifti2_is_refused(tmp_path: Path) -> None:
    n2, _ = _nibabel_ct(tmp_path, "Nifti2Image", "ct2.nii")
    (tmp_path / "cut.nii").write_bytes(n2.read_bytes()[:-100])
    with pytest.raises(InputError, match="header declares"):
        io.read_volume(tmp_path / "cut.nii")


def test_nifti_whose_compression_contradicts_its_name(tmp_path: Path) -> None:
    src = io.write_volume(_vol(), tmp_path / "ok.nii").read_bytes()
    (tmp_path / "packed.nii").write_bytes(gzip.compress(src))
    with pytest.raises(InputError, match=r"gzip-compressed.*rename it to 'packed\.nii\.gz'"):
        io.read_volume(tmp_path / "packed.nii")
    (tmp_path / "plain.nii.gz").write_bytes(src)
    with pytest.raises(InputError, match=r"uncompressed.*rename it to 'plain\.nii'"):
        io.read_volume(tmp_path / "plain.nii.gz")


@pytest.mark.parametrize("line,match", [(b"TransformMatrix = 1 0 0 1", r"TransformMatrix has 4 values.*3x3"),
                                        (b"ElementSpacing = 1 2", r"ElementSpacing has 2 values"),
                                        (b"Offset = 0 0", r"Offset has 2 values")])
def test_meta_image_geometry_that_does_not_match_ndims(tmp_path: Path, line: bytes, match: str) -> None:
    data = io.write_volume(_vol(), tmp_path / "ok.mha", compress=False).read_bytes()
    key = line.split(b" =")[0]
    start = data.index(key)
    end = data.index(b"\n", start)
    (tmp_path / "bad.mha").write_bytes(data[:start] + line + data[end:])
    with pytest.raises(InputError, match=match):
        io.read_volume(tmp_path / "bad.mha")


def test_itk_warnings_do_not_reach_the_terminal(tmp_path: Path, capfd, monkeypatch) -> None:
    # NIfTI cannot store a sheared grid: ITK prints a raw "WARNING: In .../itkNiftiImageIO.cxx, line N".
    # write_volume refuses that grid; with the refusal bypassed, ITK's warning must still stay silent.
    import SimpleITK as sitk

    vol = _vol()
    vol.direction = np.array([[1.0, 0.0995, 0], [0, 0.995, 0], [0, 0, 1.0]])
    monkeypatch.setattr(io, "is_orthonormal", lambda d: True, raising=False)
    before = sitk.ProcessObject_GetGlobalWarningDisplay()
    capfd.readouterr()
    io.write_volume(vol, tmp_path / "shear.nii")
    assert "WARNING" not in capfd.readouterr().err
    assert sitk.ProcessObject_GetGlobalWarningDisplay() == before  # restored for Slicer and others


def test_nifti_sform_warning_becomes_our_error(tmp_path: Path, capfd) -> None:
    import nibabel as nib

    aff = np.array([[-0.8, 0.1, 0, 10], [0, -0.9, 0, 20], [0, 0, 2.5, -30], [0, 0, 0, 1]])
    img = nib.Nifti1Image(np.zeros((12, 10, 8), np.int16), aff)
    img.set_sform(aff, 1)
    img.set_qform(np.diag([-0.8, -0.9, 2.5, 1]), 1)
    nib.save(img, str(tmp_path / "s.nii"))
    with pytest.raises(InputError, match="sform"):
        io.read_volume(tmp_path / "s.nii")
    assert "WARNING" not in capfd.readouterr().err
