"""`liverseg` on a DICOM series writes <case>_seg.dcm (default), <case>_sr.dcm (--dicom-sr); dcmqi reads
the SEG back voxel-identical to the <case>_label.nii.gz of the same run, for LPS, RAS and oblique series."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom")

from dcmqi_readback import read_sr, seg_to_labelmap_on  # noqa: E402
from dicom_cases import box_bundle, box_ct, write_series  # noqa: E402
from LiverCTSegmentationLib.batch.cli import main  # noqa: E402
from LiverCTSegmentationLib.engine import io  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return box_bundle(tmp_path_factory.mktemp("model") / "box")


def _report(outdir: Path) -> list[dict]:
    with open(outdir / "report.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "oblique"])
def test_dicom_input_gives_a_seg_dcmqi_reads_as_the_nifti(tmp_path: Path, bundle: Path, orientation: str) -> None:
    write_series(tmp_path / "in" / "ct1", orientation)
    out = tmp_path / "out"
    rc = main([str(tmp_path / "in" / "ct1"), "-o", str(out), "--model", str(bundle), "--no-overlay", "-q",
               "--dicom-sr"])
    assert rc == 0
    case = out / "ct1"
    label = io.read_volume(case / "ct1_label.nii.gz").array
    assert set(np.unique(label)) == {0, 1, 2}
    back = seg_to_labelmap_on(case / "ct1_seg.dcm", case / "ct1_label.nii.gz", tmp_path / "dcmqi")
    assert np.array_equal(back, label), f"{int((back != label).sum())} voxels differ"
    row = _report(out)[0]
    assert (row["dicom_seg_path"], row["dicom_sr_path"]) == ("ct1/ct1_seg.dcm", "ct1/ct1_sr.dcm")
    sr = read_sr(case / "ct1_sr.dcm", tmp_path / "sr")
    liver = next(g for g in sr["Measurements"] if g["TrackingIdentifier"] == "Liver")
    assert float(liver["measurementItems"][0]["value"]) == pytest.approx(float(row["liver_ml"]), abs=1e-3)


def test_no_dicom_seg_and_non_dicom_inputs_write_none(tmp_path: Path, bundle: Path) -> None:
    write_series(tmp_path / "in" / "ct1")
    io.write_volume(box_ct(), tmp_path / "in" / "vol.nii.gz")
    out = tmp_path / "out"
    assert main([str(tmp_path / "in"), "-o", str(out), "--model", str(bundle), "--no-overlay", "-q"]) == 0
    assert (out / "ct1" / "ct1_seg.dcm").is_file() and not (out / "ct1" / "ct1_sr.dcm").exists()
    assert not list((out / "vol").glob("*.dcm")), "a NIfTI input has no series to reference"
    # Changing the option redoes the DICOM case and leaves no stale SEG behind.
    assert main([str(tmp_path / "in"), "-o", str(out), "--model", str(bundle), "--no-overlay", "-q",
                 "--no-dicom-seg"]) == 0
    assert not (out / "ct1" / "ct1_seg.dcm").exists()
    rows = {r["case"]: r for r in _report(out)}
    assert rows["ct1"]["status"] == "ok" and rows["ct1"]["dicom_seg_path"] == ""
    assert rows["vol"]["status"] == "skipped"


def test_resume_keeps_the_seg(tmp_path: Path, bundle: Path) -> None:
    write_series(tmp_path / "ct1")
    out = tmp_path / "out"
    args = [str(tmp_path / "ct1"), "-o", str(out), "--model", str(bundle), "--no-overlay", "-q"]
    assert main(args) == 0
    seg = (out / "ct1" / "ct1_seg.dcm").read_bytes()
    assert main(args) == 0
    assert _report(out)[0]["status"] == "skipped" and (out / "ct1" / "ct1_seg.dcm").read_bytes() == seg
    (out / "ct1" / "ct1_seg.dcm").write_bytes(seg[:-10])  # a damaged SEG is an output that no longer matches
    assert main(args) == 0
    assert _report(out)[0]["status"] == "ok"


@pytest.mark.parametrize("argv, message", [
    (["--dicom-sr", "--no-dicom-seg"], "--dicom-sr needs"),
    (["--push"], "give a DICOMweb study or series URL"),
])
def test_inconsistent_dicom_options_are_usage_errors(tmp_path: Path, capsys, argv: list, message: str) -> None:
    write_series(tmp_path / "ct1")
    assert main([str(tmp_path / "ct1"), "-o", str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_real_ct_dicom_series(tmp_path: Path, bundle: Path) -> None:
    from conftest import REAL_DATA_DIR
    from LiverCTSegmentationLib.engine import dicom

    src = REAL_DATA_DIR / "chaos_evalsample_ct.nii.gz"
    if not src.is_file():
        pytest.skip(f"real CT {src} not available")
    dicom.write_dicom_series(io.read_volume(src), tmp_path / "CHAOS", rescale_intercept=-1024.0)
    out = tmp_path / "out"
    assert main([str(tmp_path / "CHAOS"), "-o", str(out), "--model", str(bundle), "--no-overlay", "-q"]) == 0
    case = out / "CHAOS"
    label = io.read_volume(case / "CHAOS_label.nii.gz").array
    assert label.any()
    back = seg_to_labelmap_on(case / "CHAOS_seg.dcm", case / "CHAOS_label.nii.gz", tmp_path / "dcmqi")
    assert np.array_equal(back, label), f"{int((back != label).sum())} voxels differ"
