"""What ``liverseg`` guarantees about the user's files (docs/guarantees.md), one test per
failure a hostile new user found (issue 13): inputs never overwritten, nothing but regular
files read, resume keyed on every byte read, true per-case statuses, no partial outputs."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from LiverCTSegmentationLib.batch import BatchOptions, discover_cases, run_batch
from LiverCTSegmentationLib.engine.errors import OutputError
from test_batch import box_bundle, make_ct, need_engine, read_report, write_case

FAST = BatchOptions(device="cpu", overlay=False)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    need_engine()
    from LiverCTSegmentationLib.engine.bundle import ModelBundle

    return ModelBundle.load(box_bundle(tmp_path_factory.mktemp("bundle") / "box"))


def _statuses(results) -> dict[str, str]:
    return {r.case: r.status for r in results}


# ------------------------------------------------------------ outputs never land on inputs
def test_report_that_is_an_input_is_refused_before_any_work(tmp_path, bundle):
    data = tmp_path / "data"
    data.mkdir()
    ct = write_case(data / "alpha.nii.gz", 1)
    named_report = data / "report.csv"
    named_report.write_bytes(ct.read_bytes())  # a CT someone named report.csv
    before = {p.name: p.read_bytes() for p in data.iterdir()}

    with pytest.raises(OutputError, match="is also an input"):
        run_batch([named_report, ct], data, FAST, bundle)  # report.csv in OUTDIR == the input
    with pytest.raises(OutputError, match="is also an input"):
        run_batch([ct], tmp_path / "out", BatchOptions(device="cpu", overlay=False, report_name=str(ct)), bundle)
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before  # nothing written, nothing changed
    assert not (tmp_path / "out").exists()


def test_case_named_like_the_report_gets_its_own_folder(tmp_path, bundle):
    data = tmp_path / "data"
    data.mkdir()
    write_case(data / "report.csv.nii.gz", 1)
    res = run_batch([data], tmp_path / "out", FAST, bundle)
    assert _statuses(res) == {"report.csv_case": "ok"}
    assert (tmp_path / "out" / "report.csv").is_file()
    assert (tmp_path / "out" / "report.csv_case" / "report.csv_case_label.nii.gz").is_file()


def test_output_folder_inside_a_dicom_input_is_refused(tmp_path, bundle):
    from LiverCTSegmentationLib.engine.dicom import write_dicom_series

    series = tmp_path / "series"
    write_dicom_series(make_ct(1)[0], series)
    with pytest.raises(OutputError, match="inside the DICOM input folder"):
        run_batch([series], series / "results", FAST, bundle)
    assert not (series / "results").exists()


def test_output_folder_equal_to_input_folder_never_takes_its_outputs_as_cases(tmp_path, bundle):
    data = tmp_path / "data"
    data.mkdir()
    write_case(data / "alpha.nii.gz", 1)
    opts = BatchOptions(device="cpu", overlay=False)
    assert _statuses(run_batch([data], data, opts, bundle)) == {"alpha": "ok"}
    assert (data / "alpha" / "alpha_label.nii.gz").is_file() and (data / "alpha" / "alpha.seg.nrrd").is_file()
    assert [c.name for c in discover_cases([data], exclude=data)] == ["alpha"]
    assert _statuses(run_batch([data], data, opts, bundle)) == {"alpha": "skipped"}
    # a .seg.nrrd lying anywhere is a Slicer segmentation, never a CT
    (data / "loose.seg.nrrd").write_bytes((data / "alpha" / "alpha.seg.nrrd").read_bytes())
    assert [c.name for c in discover_cases([data])] == ["alpha"]


# ------------------------------------------------------------ only regular files, no hangs
@pytest.mark.timeout(120)
def test_fifo_devices_and_mhd_pointing_at_dev_zero_fail_fast_alone(tmp_path, bundle):
    data = tmp_path / "data"
    data.mkdir()
    write_case(data / "good.nii.gz", 1)
    fifo = tmp_path / "ct.nii.gz"
    os.mkfifo(fifo)
    mhd = tmp_path / "zero.mhd"
    mhd.write_text("ObjectType = Image\nNDims = 3\nDimSize = 64 64 40\nElementType = MET_SHORT\n"
                   "ElementSpacing = 1 1 1\nElementDataFile = /dev/zero\n")
    t0 = time.monotonic()
    res = {r.case: r for r in run_batch([data, fifo, "/dev/zero", mhd], tmp_path / "out", FAST, bundle)}
    assert time.monotonic() - t0 < 60
    assert res["good"].status == "ok"
    assert res["ct"].status == "failed" and "named pipe (FIFO), not a regular file" in res["ct"].error
    zero = next(r for r in res.values() if r.input == str(mhd))
    assert zero.status == "failed" and "/dev/zero" in zero.error and "a device, not a regular file" in zero.error
    dev = next(r for r in res.values() if r.input == "/dev/zero")
    assert dev.status == "failed" and "a device, not a regular file" in dev.error
    assert len(read_report(tmp_path / "out" / "report.csv")) == 4


def test_symlink_loop_is_one_failed_row_and_the_batch_goes_on(tmp_path, bundle):
    data = tmp_path / "data"
    data.mkdir()
    write_case(data / "good.nii.gz", 1)
    loop_a, loop_b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    res = {r.case: r for r in run_batch([loop_a, data], tmp_path / "out", FAST, bundle)}
    assert res["good"].status == "ok"
    assert res["a"].status == "failed" and "symbolic link loop" in res["a"].error


# ------------------------------------------------------------ resume covers every byte read
def test_resume_redoes_a_case_whose_detached_data_changed(tmp_path, bundle):
    import SimpleITK as sitk

    data = tmp_path / "data"
    data.mkdir()
    ct = make_ct(1)[0]
    img = sitk.GetImageFromArray(ct.array)
    img.SetSpacing(ct.spacing)
    sitk.WriteImage(img, str(data / "ct.nhdr"), useCompression=False)
    raws = [p for p in data.iterdir() if p.name != "ct.nhdr"]
    assert len(raws) == 1, raws  # the header and its detached data file
    assert _statuses(run_batch([data / "ct.nhdr"], tmp_path / "out", FAST, bundle)) == {"ct": "ok"}
    assert _statuses(run_batch([data / "ct.nhdr"], tmp_path / "out", FAST, bundle)) == {"ct": "skipped"}
    arr = np.fromfile(raws[0], dtype=ct.array.dtype)
    arr[: arr.size // 2] = -1000  # same header, other voxels
    arr.tofile(raws[0])
    assert _statuses(run_batch([data / "ct.nhdr"], tmp_path / "out", FAST, bundle)) == {"ct": "ok"}


def test_dicom_series_in_a_subfolder_is_one_case_and_its_changes_are_seen(tmp_path, bundle):
    from LiverCTSegmentationLib.engine.dicom import write_dicom_series

    study = tmp_path / "study"
    write_dicom_series(make_ct(1)[0], study / "ct")
    # a stray DICOM file at the top makes the top folder a DICOM case whose series is below
    (study / "README.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    cases = discover_cases([study])
    assert [(c.name, c.kind) for c in cases] == [("study", "dicom")]  # not also "ct"
    out = tmp_path / "out"
    first = run_batch([study], out, FAST, bundle)
    assert first[0].status == "ok", first[0].error
    assert _statuses(run_batch([study], out, FAST, bundle)) == {"study": "skipped"}
    target = sorted((study / "ct").iterdir())[3]
    raw = bytearray(target.read_bytes())
    raw[-200:] = bytes(200)  # other pixel values in one slice of the subfolder
    target.write_bytes(bytes(raw))
    assert _statuses(run_batch([study], out, FAST, bundle)) == {"study": "ok"}


# ------------------------------------------------------------ locks and the report
def _write_lock(case_dir: Path, pid: int, host: str, started: float) -> None:
    case_dir.mkdir(parents=True, exist_ok=True)
    (case_dir / ".lock").write_text(json.dumps({"pid": pid, "host": host, "user": "ana", "started": started}))


def test_lock_of_a_suspended_run_is_waited_for_a_bounded_time_then_reported(tmp_path, bundle):
    data = tmp_path / "data"
    data.mkdir()
    write_case(data / "alpha.nii.gz", 1)
    out = tmp_path / "out"
    _write_lock(out / "alpha", os.getppid(), socket.gethostname(), 1.0e9)  # alive, never lets go
    t0 = time.monotonic()
    res = run_batch([data], out, BatchOptions(device="cpu", overlay=False, lock_wait=0.5), bundle)
    assert time.monotonic() - t0 < 30
    r = res[0]
    assert r.status == "locked" and not r.ok
    assert f"locked by PID {os.getppid()} (user ana) on {socket.gethostname()} since 2001-09-" in r.error
    assert "after waiting 0.5 s" in r.error
    rows = read_report(out / "report.csv")  # written although no case ran
    assert [(x["case"], x["status"]) for x in rows] == [("alpha", "locked")]


def test_cli_exit_code_is_not_ok_when_a_case_was_never_done(tmp_path, bundle, capsys):
    from LiverCTSegmentationLib.batch import cli

    data = tmp_path / "data"
    data.mkdir()
    write_case(data / "alpha.nii.gz", 1)
    out = tmp_path / "out"
    _write_lock(out / "alpha", 4242, "another-host", time.time())
    rc = cli.main([str(data), "-o", str(out), "--model", str(bundle.path), "--device", "cpu", "--no-overlay"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "alpha: locked: not run: locked by PID 4242 (user ana) on another-host" in captured.err
    assert "1 locked" in captured.out and "skipped" not in captured.err


# ------------------------------------------------------------ no partial files
def test_ctrl_c_during_a_case_leaves_no_outputs(tmp_path, bundle, monkeypatch):
    from LiverCTSegmentationLib.batch import segment_case as sc

    data = tmp_path / "data"
    data.mkdir()
    write_case(data / "alpha.nii.gz", 1)
    out = tmp_path / "out"

    def interrupt(*a, **k):  # Ctrl-C after the labelmap and .seg.nrrd are on disk
        raise KeyboardInterrupt

    monkeypatch.setattr(sc, "write_csv_atomic", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_batch([data], out, FAST, bundle)
    files = sorted(p.name for p in (out / "alpha").iterdir())
    assert files == [".result.json"], files
    record = json.loads((out / "alpha" / ".result.json").read_text())
    assert record["status"] == "failed" and "cancelled" in record["error"]
    monkeypatch.undo()
    assert _statuses(run_batch([data], out, FAST, bundle)) == {"alpha": "ok"}


# ------------------------------------------------------------ the command line
def test_a_file_named_like_an_option_is_never_replaced_by_the_demo(tmp_path, bundle, monkeypatch, capsys):
    from LiverCTSegmentationLib.batch import cli

    monkeypatch.chdir(tmp_path)
    write_case(tmp_path / "-o.nii.gz", 1)
    rc = cli.main(["-o.nii.gz"])
    assert rc == 2
    assert "'-o.nii.gz' is the name of an existing file" in capsys.readouterr().err
    assert not (tmp_path / ".nii.gz").exists() and not (tmp_path / "liverseg-demo-output").exists()
    rc = cli.main(["-o", "out", "--model", str(bundle.path), "--device", "cpu", "--no-overlay", "--",
                   "-o.nii.gz"])
    assert rc == 0
    assert (tmp_path / "out" / "-o" / "-o_label.nii.gz").is_file()


def test_every_test_docs_guarantees_cites_exists():
    """docs/guarantees.md names the tests behind each promise; a renamed or deleted test breaks it."""
    import re

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "guarantees.md").read_text(encoding="utf-8")
    current = None
    cited = []
    for m in re.finditer(r"`(?:Testing/)?(test_\w+\.py)?(?:::)?(test_\w+)?`", doc):
        file, name = m.group(1), m.group(2)
        if file:
            assert (root / "Testing" / file).is_file(), file
        if file and name:
            current = file  # a bare `::test_x` belongs to the last file cited with a test name
        if name and current:
            cited.append((current, name))
    assert len(cited) >= 12
    for file, name in cited:
        assert re.search(rf"^def {name}\(", (root / "Testing" / file).read_text(encoding="utf-8"), re.M), \
            f"docs/guarantees.md cites {file}::{name}, which does not exist"
