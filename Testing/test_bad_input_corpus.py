"""A corpus of broken inputs driven through the REAL ``liverseg`` command line.

Engine-level tests (test_io, test_dicom, test_checks) prove the right exception
is raised; these prove what a user actually sees: for every broken input the
process exits 1, stderr names the problem in words (keywords per case), shows
no traceback, and the case's output folder holds no result file and no
temporary file. Inputs whose only oddity is a non-ASCII or space-containing
path must succeed.

All cases are built once and run as ONE batch per sub-corpus (a CLI start costs
a few seconds on 2 cores); each case's line on stderr and its folder are then
checked separately, so a failure still names the case. One case is also run
alone to pin the single-input exit code.
"""
from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (40, 64, 64)  # k, j, i
SPACING = (5.5, 4.5, 5.0)
RESULT_SUFFIXES = ("_label.nii.gz", "_label.nrrd", ".seg.nrrd", "_stats.json", "_lesions.csv", "_overlay.png")


# ----------------------------------------------------------------------------- helpers
def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "LiverCTSegmentation"), str(ROOT / "Testing"),
                                         env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def liverseg(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "LiverCTSegmentationLib.batch.cli", *map(str, args)],
                          capture_output=True, text=True, encoding="utf-8", env=_env(), timeout=timeout)


def _ct():
    from LiverCTSegmentationLib.synthetic.phantom import make_phantom

    ct, _ = make_phantom(3, shape_kji=SHAPE, spacing=SPACING, orientation="LPS", n_lesions=1, fov="full")
    return ct


def _good_nifti(path: Path) -> Path:
    from LiverCTSegmentationLib.engine import io

    return io.write_volume(_ct(), path, overwrite=True)


def _nifti_with(path: Path, data: np.ndarray, zooms=None, dim_info: dict | None = None) -> Path:
    """Arbitrary NIfTI written with nibabel (can express what ITK refuses to write)."""
    import nibabel as nib

    img = nib.Nifti1Image(data, np.diag([5.0, 5.0, 5.0, 1.0]))
    hdr = img.header
    if zooms is not None:
        hdr.set_zooms(zooms)
    for k, v in (dim_info or {}).items():
        hdr[k] = v
    nib.save(img, str(path))
    return path


def _patch_pixdim(path: Path, value: float) -> Path:
    """Rewrite pixdim[1] (x spacing) of an uncompressed NIfTI-1 in place (float32 at byte 80)."""
    data = bytearray(path.read_bytes())
    struct.pack_into("<f", data, 80, value)
    path.write_bytes(bytes(data))
    return path


# ----------------------------------------------------------------------- corpus
# name -> (builder(folder) -> input path, keywords that must all appear in the case's error line)
Builder = Callable[[Path], Path]


def _truncated(d: Path) -> Path:
    src = _good_nifti(d / "t_src.nii.gz")
    data = src.read_bytes()
    src.unlink()
    p = d / "truncated.nii.gz"
    p.write_bytes(data[: len(data) // 2])
    return p


def _corrupted(d: Path) -> Path:
    src = _good_nifti(d / "c_src.nii.gz")
    data = bytearray(src.read_bytes())
    src.unlink()
    mid = len(data) // 2
    data[mid:mid + 64] = bytes((b ^ 0x5A) for b in data[mid:mid + 64])
    p = d / "corrupted.nii.gz"
    p.write_bytes(bytes(data))
    return p


def _wrong_magic(d: Path) -> Path:
    p = d / "wrong_magic.nii.gz"
    p.write_bytes(b"%PDF-1.4 this is a PDF report, not an image\n" * 40)
    return p


def _dimension_lie(d: Path) -> Path:
    raw = _good_nifti(d / "lie_src.nii")
    data = bytearray(raw.read_bytes())
    raw.unlink()
    # NIfTI-1 dim[3] (slices) is an int16 at byte 46: claim 10x more slices than stored.
    assert struct.unpack_from("<h", data, 46)[0] == SHAPE[0]
    struct.pack_into("<h", data, 46, SHAPE[0] * 10)
    p = d / "dimension_lie.nii.gz"
    p.write_bytes(gzip.compress(bytes(data)))
    return p


def _spacing(value: float, name: str) -> Builder:
    def build(d: Path) -> Path:
        raw = _good_nifti(d / f"{name}_src.nii")
        _patch_pixdim(raw, value)
        p = d / f"{name}.nii.gz"
        p.write_bytes(gzip.compress(raw.read_bytes()))
        raw.unlink()
        return p
    return build


def _nrrd_spacing(vector: bytes, name: str) -> Builder:
    def build(d: Path) -> Path:
        from LiverCTSegmentationLib.engine import io

        src = io.write_volume(_ct(), d / f"{name}_src.nrrd")
        data = src.read_bytes()
        src.unlink()
        assert b"(5.5,0,0)" in data
        p = d / f"{name}.nrrd"
        p.write_bytes(data.replace(b"(5.5,0,0)", vector, 1))
        return p
    return build


def _two_d(d: Path) -> Path:
    return _nifti_with(d / "two_d.nii.gz", _ct().array[20].T.astype(np.int16).copy())


def _four_d(d: Path) -> Path:
    a = _ct().array.T.astype(np.int16)  # nibabel wants (i, j, k)
    return _nifti_with(d / "four_d.nii.gz", np.stack([a, a], axis=-1))


def _rgb(d: Path) -> Path:
    import SimpleITK as sitk

    rgb = np.zeros(SHAPE + (3,), np.uint8)
    rgb[..., 0] = 200
    img = sitk.GetImageFromArray(rgb, isVector=True)
    p = d / "rgb.nrrd"
    sitk.WriteImage(img, str(p), True)
    return p


def _one_voxel(d: Path) -> Path:
    from LiverCTSegmentationLib.engine import io
    from LiverCTSegmentationLib.engine.volume import Volume

    return io.write_volume(Volume(np.full((1, 1, 1), 40, np.int16)), d / "one_voxel.nii.gz")


def _mr_like(d: Path) -> Path:
    from LiverCTSegmentationLib.engine import io

    ct = _ct()
    # MR: arbitrary positive units, no air at -1000, no Hounsfield scale.
    mr = (np.clip(ct.array.astype(np.float32) + 1000.0, 0, None) * 0.6).astype(np.int16)
    return io.write_volume(ct.with_array(mr), d / "mr_like.nii.gz")


def _empty_file(d: Path) -> Path:
    p = d / "empty.nii.gz"
    p.write_bytes(b"")
    return p


def _dicom_mixed(d: Path) -> Path:
    import pydicom

    from LiverCTSegmentationLib.engine.dicom import write_dicom_series

    folder = d / "dicom_mixed"
    uid = "1.2.826.0.1.3680043.8.498.4242"
    ct = _ct()
    files = write_dicom_series(ct, folder, series_uid=uid)
    # a slice of another acquisition (different pixel spacing) filed under the same series
    ds = pydicom.dcmread(files[7])
    ds.PixelSpacing = ["0.7", "0.7"]
    ds.save_as(files[7])
    return folder


def _dicom_missing(d: Path) -> Path:
    from LiverCTSegmentationLib.engine.dicom import write_dicom_series

    folder = d / "dicom_missing"
    files = write_dicom_series(_ct(), folder)
    files[len(files) // 2].unlink()
    return folder


def _sheared_nrrd(d: Path) -> Path:
    from LiverCTSegmentationLib.engine import io

    src = io.write_volume(_ct(), d / "shear_src.nrrd")
    data = src.read_bytes()
    src.unlink()
    assert b"(0,4.5,0)" in data
    p = d / "sheared.nrrd"
    p.write_bytes(data.replace(b"(0,4.5,0)", b"(0.45,4.5,0)", 1))  # a 0.1 shear: |det| still 0.995
    return p


def _dicom_tilted(d: Path) -> Path:
    import pydicom

    from LiverCTSegmentationLib.engine.dicom import write_dicom_series

    folder = d / "dicom_tilted"
    for k, f in enumerate(write_dicom_series(_ct(), folder)):
        ds = pydicom.dcmread(f)
        pos = [float(x) for x in ds.ImagePositionPatient]
        pos[1] += SPACING[2] * k * np.tan(np.radians(20.0))  # 20° gantry tilt: slices shift along y
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.save_as(f)
    return folder


def _dicom_truncated_slice(d: Path) -> Path:
    from LiverCTSegmentationLib.engine.dicom import write_dicom_series

    folder = d / "dicom_truncated_slice"
    last = write_dicom_series(_ct(), folder)[-1]
    last.write_bytes(last.read_bytes()[:-100])
    return folder


def _dicom_mr(d: Path) -> Path:
    from LiverCTSegmentationLib.engine.dicom import write_dicom_series

    ct = _ct()
    folder = d / "dicom_mr"
    write_dicom_series(ct.with_array(np.clip(ct.array + 1000, 0, None).astype(np.int16)), folder, modality="MR")
    return folder


def _gzip_named_nii(d: Path) -> Path:
    src = _good_nifti(d / "gzn_src.nii")
    p = d / "gzip_named.nii"
    p.write_bytes(gzip.compress(src.read_bytes()))
    src.unlink()
    return p


def _mha_2x2_direction(d: Path) -> Path:
    from LiverCTSegmentationLib.engine import io

    src = io.write_volume(_ct(), d / "m_src.mha", compress=False)
    data = src.read_bytes()
    src.unlink()
    p = d / "mha_2x2_direction.mha"
    p.write_bytes(data.replace(b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0 0 1", 1))
    return p


CORPUS: dict[str, tuple[Builder, tuple[str, ...]]] = {
    "truncated": (_truncated, ("truncated",)),
    "corrupted": (_corrupted, ("corrupted",)),
    "wrong_magic": (_wrong_magic, ("not a valid nifti",)),
    "dimension_lie": (_dimension_lie, ("header declares",)),
    "zero_spacing": (_spacing(0.0, "zero_spacing"), ("spacing",)),
    "nan_spacing": (_spacing(float("nan"), "nan_spacing"), ("spacing",)),
    "zero_spacing_nrrd": (_nrrd_spacing(b"(0,0,0)", "zero_spacing_nrrd"), ("spacing",)),
    "nan_spacing_nrrd": (_nrrd_spacing(b"(nan,0,0)", "nan_spacing_nrrd"), ("cannot read",)),
    "two_d": (_two_d, ("2d", "3d ct")),
    "four_d": (_four_d, ("4d", "one 3d phase")),
    "rgb": (_rgb, ("rgb", "single-channel")),
    "one_voxel": (_one_voxel, ("too small",)),
    "mr_like": (_mr_like, ("hounsfield", "mr")),
    "empty": (_empty_file, ("empty", "0 bytes")),
    "dicom_mixed": (_dicom_mixed, ("mixes slices", "pixel spacings")),
    "dicom_missing": (_dicom_missing, ("gap",)),
    "sheared": (_sheared_nrrd, ("sheared", "84.3°", "resample")),
    "dicom_tilted": (_dicom_tilted, ("gantry tilt of 20.0°", "dcm2niix")),
    "dicom_truncated_slice": (_dicom_truncated_slice, ("damaged slice", "0039.dcm", "truncated")),
    "dicom_mr": (_dicom_mr, ("mr series", "ct series")),
    "gzip_named_nii": (_gzip_named_nii, ("gzip-compressed", "rename it to 'gzip_named.nii.gz'")),
    "mha_2x2_direction": (_mha_2x2_direction, ("transformmatrix has 4 values", "3x3")),
}


# Known engine bug (engine/io.py, not owned here): a NIfTI whose pixdim is 0 or NaN is read
# by ITK/niftilib with that spacing silently replaced by 1 mm, so it is segmented with a wrong
# geometry (volumes in mL off by the factor). io._check_nifti should reject pixdim[1:4] <= 0 or
# non-finite. strict=True: these start failing (XPASS) as soon as the reader is fixed.
KNOWN_BUGS: set[str] = set()  # zero_spacing / nan_spacing fixed in io._check_nifti
_BUG = pytest.mark.xfail(strict=True, reason="engine.io accepts NIfTI pixdim 0/NaN as 1 mm (see KNOWN_BUGS)")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from bundle_fixtures import make_box_bundle

    return make_box_bundle(tmp_path_factory.mktemp("model") / "box", liver_hu=(60.0, 200.0), tumor_hu=None,
                           coarse_spacing=6.0, fine_spacing=4.0, margin_mm=10.0)


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory, model) -> tuple[subprocess.CompletedProcess, Path, dict[str, str]]:
    """Build every broken input in one folder, run ``liverseg`` once over all of them."""
    d = tmp_path_factory.mktemp("corpus")
    inputs = {name: build(d) for name, (build, _kw) in CORPUS.items()}
    out = tmp_path_factory.mktemp("corpus_out")
    proc = liverseg(*inputs.values(), "-o", out, "--model", model, "--device", "cpu", "--no-overlay")
    from LiverCTSegmentationLib.batch import discover_cases

    names = {c.path.resolve(): c.name for c in discover_cases(list(inputs.values()))}
    case_names = {k: names[Path(p).resolve()] for k, p in inputs.items()}
    return proc, out, case_names


def _case_error_line(stderr: str, case: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith(f"error: {case}:")]
    assert len(lines) == 1, f"expected one error line for {case!r} in:\n{stderr}"
    return lines[0]


def _result_files(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    return [p for p in folder.rglob("*")
            if p.name.endswith(RESULT_SUFFIXES) or ".tmp-" in p.name or p.name == ".done.json"]


def test_corpus_run_exits_1_without_traceback(corpus_run) -> None:
    proc, out, names = corpus_run
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "WARNING: In " not in proc.stderr  # ITK's raw warnings (source path, line) stay off the terminal
    n_bad = len(CORPUS) - len(KNOWN_BUGS)
    assert f"{len(KNOWN_BUGS)} ok, 0 skipped, {n_bad} failed" in proc.stdout, proc.stdout


@pytest.mark.parametrize("name", [pytest.param(n, marks=_BUG) if n in KNOWN_BUGS else n for n in sorted(CORPUS)])
def test_each_broken_input_has_a_specific_message_and_no_output(corpus_run, name: str) -> None:
    proc, out, names = corpus_run
    case = names[name]
    line = _case_error_line(proc.stderr, case).lower()
    for kw in CORPUS[name][1]:
        assert kw in line, f"{name}: {kw!r} missing from {line!r}"
    assert "unexpected error" not in line and "rerun with --debug" not in line
    assert _result_files(out / case) == [], f"{name} left outputs behind"
    record = json.loads((out / case / ".result.json").read_text(encoding="utf-8"))
    assert record["status"] == "failed" and record["error_kind"] in ("input", "resource")


def test_single_broken_input_alone_exits_1(tmp_path: Path, model: Path) -> None:
    bad = _truncated(tmp_path)
    out = tmp_path / "out"
    proc = liverseg(bad, "-o", out, "--model", model, "--device", "cpu", "--no-overlay", "--quiet")
    assert proc.returncode == 1
    assert "truncated" in proc.stderr and "Traceback" not in proc.stderr
    assert _result_files(out) == []


def test_non_ascii_and_space_paths_work(tmp_path: Path, model: Path) -> None:
    from LiverCTSegmentationLib.engine import io
    from LiverCTSegmentationLib.engine.dicom import write_dicom_series

    folder = tmp_path / "Patiënt Øyvind 患者" / "CT abdomen é"
    folder.mkdir(parents=True)
    nii = _good_nifti(folder / "ct scan ü.nii.gz")
    dcm = folder / "dicom série 1"
    write_dicom_series(_ct(), dcm)
    out = tmp_path / "résultats out"
    proc = liverseg(nii, dcm, "-o", out, "--model", model, "--device", "cpu", "--no-overlay", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for case in ("ct scan ü", "dicom série 1"):
        label = out / case / f"{case}_label.nii.gz"
        assert label.is_file(), sorted(p.name for p in out.rglob("*"))
        lab = io.read_volume(label)
        assert lab.same_grid(_ct()) and (lab.array == 1).sum() > 100
