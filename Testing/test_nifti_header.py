"""engine.nifti_header: a plain NIfTI-1 header read without nibabel gives nibabel's raw values;
every other header is left to nibabel (None), and reading a plain file never imports nibabel."""
from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from LiverCTSegmentationLib.engine import io
from LiverCTSegmentationLib.engine.nifti_header import read_plain_header
from LiverCTSegmentationLib.engine.volume import Volume

OBLIQUE = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])


def _raw(path: Path):
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        return nib.Nifti1Header.from_fileobj(fh, check=False)


def _same_as_nibabel(path: Path) -> None:
    fast, raw = read_plain_header(path), _raw(path)
    assert fast is not None
    for key in ("pixdim", "scl_slope", "scl_inter", "sform_code"):
        np.testing.assert_array_equal(fast[key], raw[key])
    assert bytes(fast["magic"]) == bytes(raw["magic"]) and fast.sizeof_hdr == raw.sizeof_hdr
    assert fast.get_data_shape() == raw.get_data_shape()
    assert fast.get_data_dtype() == raw.get_data_dtype()
    assert fast.get_data_offset() == raw.get_data_offset()
    np.testing.assert_array_equal(fast.get_sform(), raw.get_sform())


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int8, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_itk_written_headers_read_as_nibabel_reads_them(tmp_path: Path, dtype, suffix) -> None:
    arr = np.arange(5 * 6 * 7).reshape(7, 6, 5).astype(dtype)
    path = io.write_volume(Volume(arr, (0.71, 0.83, 2.5), (-101.5, 22.25, -300.0), OBLIQUE), tmp_path / f"v{suffix}")
    _same_as_nibabel(path)


def test_real_ct_header_reads_as_nibabel_reads_it(real_data_dir: Path) -> None:
    _same_as_nibabel(real_data_dir / "chaos_evalsample_ct.nii.gz")


def _nibabel_file(tmp_path: Path, name: str, endianness: str = "<", **change) -> Path:
    """A NIfTI-1 file whose header is nibabel's, with ``change`` written as given (nib.save would fix it)."""
    hdr = nib.Nifti1Header(endianness=endianness)
    hdr.set_data_shape((4, 5, 6))
    hdr.set_data_dtype(np.int16)
    affine = np.diag([0.8, 0.9, 2.0, 1.0])
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr["vox_offset"] = 352
    for key, value in change.items():
        hdr[key] = value
    blob = hdr.binaryblock + b"\0" * 4 + np.zeros(4 * 5 * 6, np.int16).tobytes()
    path = tmp_path / name
    path.write_bytes(gzip.compress(blob) if name.endswith(".gz") else blob)
    return path


def test_a_plain_nibabel_file_is_read(tmp_path: Path) -> None:
    _same_as_nibabel(_nibabel_file(tmp_path, "plain.nii.gz"))


@pytest.mark.parametrize("change", [{"sform_code": 0}, {"datatype": 1}, {"dim": [4, 4, 5, 6, 2, 1, 1, 1]},
                                    {"vox_offset": 200}, {"magic": b"ni1"}])
def test_unusual_headers_are_left_to_nibabel(tmp_path: Path, change) -> None:
    assert read_plain_header(_nibabel_file(tmp_path, "odd.nii.gz", **change)) is None


def test_big_endian_nifti2_extended_and_truncated_headers_are_left_to_nibabel(tmp_path: Path) -> None:
    data, affine = np.zeros((4, 5, 6), np.int16), np.diag([0.8, 0.9, 2.0, 1.0])
    _nibabel_file(tmp_path, "be.nii.gz", endianness=">")
    nib.save(nib.Nifti2Image(data, affine), str(tmp_path / "n2.nii.gz"))
    ext = nib.Nifti1Image(data, affine)
    ext.header.set_sform(affine, code=1)
    ext.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment here.."))
    nib.save(ext, str(tmp_path / "ext.nii"))
    plain = _nibabel_file(tmp_path, "plain.nii")
    (tmp_path / "short.nii").write_bytes(plain.read_bytes()[:300])
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b" + b"\x00" * 40)
    for name in ("be.nii.gz", "n2.nii.gz", "ext.nii", "short.nii", "broken.nii.gz"):
        assert read_plain_header(tmp_path / name) is None, name


def test_reading_a_plain_nii_gz_does_not_import_nibabel(tmp_path: Path) -> None:
    path = io.write_volume(Volume(np.zeros((3, 4, 5), np.int16), (1.0, 1.0, 2.0)), tmp_path / "v.nii.gz")
    code = ("import sys; from LiverCTSegmentationLib.engine import io; v = io.read_volume(sys.argv[1]); "
            "print(v.array.shape, 'nibabel' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["(3,", "4,", "5)", "False"]
