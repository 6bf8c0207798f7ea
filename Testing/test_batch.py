"""batch.run_batch in-process: discovery, per-case isolation, resume, atomicity, locks, errors.

The CLI tests (test_cli.py) exercise the same code through real processes
(kill -9, concurrent runs); these tests cover the logic quickly and precisely.
"""
from __future__ import annotations

import csv
import errno
import functools
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from LiverCTSegmentationLib import batch
from LiverCTSegmentationLib.batch import BatchOptions, discover_cases, run_batch
from LiverCTSegmentationLib.engine.errors import InputError, OutputError
from LiverCTSegmentationLib.engine.volume import Volume

SHAPE = (40, 64, 64)  # k, j, i


# ----------------------------------------------------------------- shared helpers
def need_engine() -> None:
    """Skip (with the reason) while the engine modules the batch needs are not there."""
    for mod in ("pipeline", "io", "checks", "segfile", "bundle", "statistics"):
        pytest.importorskip(f"LiverCTSegmentationLib.engine.{mod}", reason=f"engine.{mod} not written yet")
    pytest.importorskip("bundle_fixtures", reason="Testing/bundle_fixtures.py not written yet")


@functools.lru_cache(maxsize=16)
def make_ct(seed: int = 0) -> tuple[Volume, Volume]:
    """A small abdominal phantom (synthetic.phantom) or, until it exists, a simple body."""
    try:
        from LiverCTSegmentationLib.synthetic.phantom import make_phantom
    except ImportError:
        make_phantom = None
    if make_phantom is not None:
        return make_phantom(seed, shape_kji=SHAPE, spacing=(5.5, 4.5, 5.0), orientation="LPS",
                            n_lesions=1, fov="full")
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    ct = np.full(SHAPE, -1000, np.int16)
    body = ((i - 32) / 29.0) ** 2 + ((j - 32) / 22.0) ** 2 < 1
    ct[body] = 40
    liver = body & (((i - 20) / 10.0) ** 2 + ((j - 28) / 9.0) ** 2 + ((k - 22) / 10.0) ** 2 < 1)
    ct[liver] = 120
    ct = (ct + rng.normal(0, 5, SHAPE)).astype(np.int16)
    lab = liver.astype(np.uint8)
    vol = Volume(ct, (5.5, 4.5, 5.0), (-176.0, -144.0, 0.0), np.eye(3))
    return vol, vol.with_array(lab)


def write_case(path: Path, seed: int = 0) -> Path:
    from LiverCTSegmentationLib.engine import io

    ct, _ = make_ct(seed)
    io.write_volume(ct, path, overwrite=True)
    return path


def box_bundle(folder: Path) -> Path:
    from bundle_fixtures import make_box_bundle

    # Single stage at 6 mm: deterministic non-empty output, fast (the cascade is tested in test_pipeline).
    return make_box_bundle(folder, liver_hu=(60.0, 200.0), tumor_hu=None, two_stage=False, coarse_spacing=6.0)


def read_report(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def temp_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or p.name == ".lock"]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    need_engine()
    return box_bundle(tmp_path_factory.mktemp("bundle") / "box")


@pytest.fixture(scope="module")
def loaded_bundle(bundle_dir):
    from LiverCTSegmentationLib.engine.bundle import ModelBundle

    return ModelBundle.load(bundle_dir)


@pytest.fixture
def inputs(tmp_path) -> Path:
    need_engine()
    d = tmp_path / "in put ä"
    d.mkdir()
    write_case(d / "alpha.nii.gz", 1)
    write_case(d / "béta case.nrrd", 2)
    return d


FAST = BatchOptions(device="cpu", overlay=False)


# --------------------------------------------------------------------- discovery
def test_discovery_names_sorted_unique_and_stable(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for p in ["a/ct.nii.gz", "b/ct.nrrd", "a/Zeta.mha", "a/x.y.nii", "b/ünï côde.nii.gz", "a/notes.txt",
              "b/.hidden.nii.gz"]:
        (tmp_path / p).write_bytes(b"x")
    dicom = tmp_path / "series 1"
    dicom.mkdir()
    for n in range(3):
        (dicom / f"IM{n}").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)
    out = tmp_path / "a" / "results"  # output inside an input folder is never an input
    out.mkdir()
    (out / "old_label.nii.gz").write_bytes(b"x")

    cases = discover_cases([tmp_path / "a", tmp_path / "b", dicom], exclude=out)
    names = [c.name for c in cases]
    assert names == sorted(names, key=str.casefold)
    assert len(set(n.casefold() for n in names)) == len(names)
    assert "x.y" in names and "Zeta" in names and "ünï côde" in names and "series 1" in names
    assert not any("old" in n or "hidden" in n or "notes" in n for n in names)
    ct_names = [n for n in names if n.startswith("ct_")]
    assert len(ct_names) == 2  # a/ct.nii.gz and b/ct.nrrd collide -> both disambiguated
    assert [c.kind for c in cases if c.name == "series 1"] == ["dicom"]
    again = [c.name for c in discover_cases([dicom, tmp_path / "b", tmp_path / "a"], exclude=out)]
    assert sorted(again) == sorted(names)  # independent of argument order


def test_case_stem_double_extension():
    assert batch.case_stem(Path("x/CT.NII.GZ")) == "CT"
    assert batch.case_stem(Path("scan.v2.nrrd")) == "scan.v2"
    assert batch.case_stem(Path("weird.bin")) == "weird"


def test_no_inputs_found_is_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no CT volumes"):
        run_batch([tmp_path / "empty"], tmp_path / "out", FAST, bundle=object())


# ------------------------------------------------------------------ main behaviour
def test_batch_ok_failed_report_and_outputs(tmp_path, inputs, loaded_bundle):
    from LiverCTSegmentationLib.engine import io, segfile

    bad = inputs / "broken.nii.gz"
    good = (inputs / "alpha.nii.gz").read_bytes()
    bad.write_bytes(good[: len(good) // 2] + os.urandom(64) + good[len(good) // 2 + 64:])
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    out = tmp_path / "out"
    opts = BatchOptions(device="cpu", overlay=True)
    seen = []
    res = run_batch([inputs], out, opts, loaded_bundle, progress=lambda f, s: seen.append((f, s)))
    by = {r.case: r for r in res}
    assert set(by) == {"alpha", "béta case", "broken"}
    assert by["alpha"].status == by["béta case"].status == "ok"
    assert by["broken"].status == "failed" and by["broken"].error and by["broken"].error_kind == "input"
    rows = read_report(out / "report.csv")
    assert {r["case"]: r["status"] for r in rows} == {"alpha": "ok", "béta case": "ok", "broken": "failed"}
    assert len(rows) == 3
    assert next(r for r in rows if r["case"] == "broken")["error"] == by["broken"].error
    for name in ("alpha", "béta case"):
        d = out / name
        for f in (f"{name}_label.nii.gz", f"{name}.seg.nrrd", f"{name}_stats.json", f"{name}_lesions.csv",
                  f"{name}_overlay.png", ".done.json"):
            assert (d / f).is_file(), f
        src = io.read_volume(by[name].input)
        lab = io.read_volume(d / f"{name}_label.nii.gz")
        assert lab.same_grid(src) and lab.array.dtype == np.uint8
        assert lab.array.max() >= 1  # box bundle: liver-HU region found
        _, segs = segfile.read_seg_nrrd(d / f"{name}.seg.nrrd")
        assert {s["name"] for s in segs} >= {"Liver", "Liver tumor"}
        stats = json.loads((d / f"{name}_stats.json").read_text(encoding="utf-8"))
        assert stats["statistics"]["liver_ml"] > 0
        row = next(r for r in rows if r["case"] == name)
        assert float(row["liver_ml"]) == pytest.approx(stats["statistics"]["liver_ml"], rel=1e-3)
        assert float(row["seconds_total"]) > 0 and row["model_name"] == "threshold-box-test"
        assert (out / row["label_path"]).is_file()
    # inputs untouched, nothing written outside OUTDIR, no leftovers
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before
    assert not temp_leftovers(out)
    fr = [f for f, _ in seen]
    assert fr == sorted(fr) or max(fr) == 1.0
    assert any("coarse" in s for _, s in seen) and seen[-1][0] == 1.0


def test_resume_skips_and_redoes_changed_cases(tmp_path, inputs, loaded_bundle):
    out = tmp_path / "out"
    first = {r.case: r for r in run_batch([inputs], out, FAST, loaded_bundle)}
    assert all(r.status == "ok" for r in first.values())
    second = {r.case: r for r in run_batch([inputs], out, FAST, loaded_bundle)}
    assert {r.status for r in second.values()} == {"skipped"}
    assert second["alpha"].statistics == first["alpha"].statistics
    assert [r["status"] for r in read_report(out / "report.csv")] == ["skipped", "skipped"]

    (out / "alpha" / "alpha_stats.json").unlink()  # output deleted -> redo
    write_case(inputs / "béta case.nrrd", 7)  # input changed -> redo
    third = {r.case: r for r in run_batch([inputs], out, FAST, loaded_bundle)}
    assert third["alpha"].status == "ok" and third["béta case"].status == "ok"
    assert (out / "alpha" / "alpha_stats.json").is_file()

    (out / "alpha" / "alpha_lesions.csv").write_text("tampered\n")  # output modified -> redo
    fourth = {r.case: r for r in run_batch([inputs], out, FAST, loaded_bundle)}
    assert fourth["alpha"].status == "ok" and fourth["béta case"].status == "skipped"

    nrrd = BatchOptions(device="cpu", overlay=False, label_format="nrrd")  # options changed -> redo
    fifth = {r.case: r for r in run_batch([inputs], out, nrrd, loaded_bundle)}
    assert {r.status for r in fifth.values()} == {"ok"}
    assert (out / "alpha" / "alpha_label.nrrd").is_file()

    # --no-resume without --overwrite refuses to clobber; --overwrite recomputes.
    noresume = {r.case: r for r in run_batch([inputs], out, nrrd, loaded_bundle, resume=False)}
    assert {r.status for r in noresume.values()} == {"failed"}
    assert "overwrite" in noresume["alpha"].error
    over = {r.case: r for r in run_batch([inputs], out, nrrd, loaded_bundle, overwrite=True)}
    assert {r.status for r in over.values()} == {"ok"}


def test_failure_while_writing_leaves_case_to_redo(tmp_path, inputs, loaded_bundle, monkeypatch):
    """A case that fails after writing some outputs leaves none of them (issue 13 item 1)."""
    from LiverCTSegmentationLib.batch import segment_case as sc

    out = tmp_path / "out"
    opts = BatchOptions(device="cpu", overlay=True)

    def boom(*a, **k):
        raise RuntimeError("simulated crash while writing the lesion table")

    monkeypatch.setattr(sc, "write_csv_atomic", boom)  # after the labelmap and .seg.nrrd are written
    res = run_batch([inputs], out, opts, loaded_bundle)
    assert {r.status for r in res} == {"failed"}
    assert all(r.error_kind == "internal" and "simulated crash" in r.error for r in res)
    assert not list(out.rglob(".done.json")) and not temp_leftovers(out)
    left = sorted(p.name for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert left == ["report.csv"], left
    monkeypatch.undo()
    res = run_batch([inputs], out, opts, loaded_bundle)
    assert {r.status for r in res} == {"ok"}


def test_overlay_failure_is_a_note_not_a_failed_case(tmp_path, inputs, loaded_bundle, monkeypatch):
    from LiverCTSegmentationLib.batch import overlay

    def boom(*a, **k):
        raise RuntimeError("simulated crash while drawing")

    monkeypatch.setattr(overlay, "save_overlay_png", boom)
    res = run_batch([inputs], tmp_path / "out", BatchOptions(device="cpu", overlay=True), loaded_bundle)
    assert {r.status for r in res} == {"ok"}
    assert all("overlay picture not written (RuntimeError: simulated crash" in " ".join(r.warnings) for r in res)
    assert all("overlay" not in r.outputs for r in res)
    assert len(list((tmp_path / "out").rglob(".done.json"))) == 2


def test_cancel_event_stops_cleanly(tmp_path, inputs, loaded_bundle):
    from LiverCTSegmentationLib.engine.errors import Cancelled

    out = tmp_path / "out"
    ev = threading.Event()

    def progress(f, stage):
        if "coarse" in stage:
            ev.set()

    with pytest.raises(Cancelled):
        run_batch([inputs], out, FAST, loaded_bundle, progress=progress, cancel_event=ev)
    assert not list(out.rglob(".done.json")) and not temp_leftovers(out)


# -------------------------------------------------------------------------- locks
def _write_lock(case_dir: Path, pid: int, host: str) -> None:
    case_dir.mkdir(parents=True, exist_ok=True)
    (case_dir / ".lock").write_text(json.dumps({"pid": pid, "host": host, "started": time.time()}))


def test_stale_lock_of_dead_pid_is_taken_over(tmp_path, inputs, loaded_bundle):
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # a pid that is certainly dead now
    out = tmp_path / "out"
    _write_lock(out / "alpha", p.pid, socket.gethostname())
    res = {r.case: r for r in run_batch([inputs], out, FAST, loaded_bundle)}
    assert res["alpha"].status == "ok"
    assert not (out / "alpha" / ".lock").exists()


def test_live_lock_is_waited_for_and_foreign_host_lock_respected(tmp_path, inputs, loaded_bundle):
    out = tmp_path / "out"
    # A live holder on this host (our parent process) that releases the case after 1 s.
    _write_lock(out / "alpha", os.getppid(), socket.gethostname())
    threading.Timer(1.0, lambda: (out / "alpha" / ".lock").unlink()).start()
    t0 = time.monotonic()
    res = {r.case: r for r in run_batch([inputs], out, FAST, loaded_bundle)}
    assert res["alpha"].status == "ok" and time.monotonic() - t0 >= 1.0

    _write_lock(out / "béta case", 12345, "some-other-host")
    res = {r.case: r for r in run_batch([inputs], out, FAST, loaded_bundle, overwrite=True)}
    # Never "skipped (already done)": it never ran. The report has its true row (docs/guarantees.md).
    assert res["béta case"].status == "locked" and not res["béta case"].ok
    assert "locked by PID 12345 on some-other-host since" in res["béta case"].error
    assert (out / "béta case" / ".lock").exists()  # not ours: left alone
    rows = {r["case"]: r for r in read_report(out / "report.csv")}
    assert rows["béta case"]["status"] == "locked" and rows["alpha"]["status"] == "ok"


# ------------------------------------------------------------------------- output
def test_unwritable_outdir_is_clear_output_error(tmp_path, inputs, loaded_bundle):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError) as ei:
        run_batch([inputs], blocker / "out", FAST, loaded_bundle)
    assert "file" in str(ei.value)
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(OutputError, match="permission denied|not writable"):
                run_batch([inputs], ro / "out", FAST, loaded_bundle)
        finally:
            ro.chmod(0o755)


def test_disk_full_keeps_completed_cases_and_stops(tmp_path, inputs, loaded_bundle, monkeypatch):
    from LiverCTSegmentationLib.engine import io

    out = tmp_path / "out"
    run_batch([inputs / "alpha.nii.gz"], out, FAST, loaded_bundle)
    done_before = (out / "alpha" / ".done.json").read_bytes()
    write_case(inputs / "gamma.mha", 3)

    def full(vol, path, overwrite=False):
        err = OSError(errno.ENOSPC, "No space left on device")
        raise OutputError(f"Cannot write '{path}': the disk is full.") from err

    monkeypatch.setattr(io, "write_volume", full)
    res = {r.case: r for r in run_batch([inputs], out, FAST, loaded_bundle)}
    assert res["alpha"].status == "skipped"
    assert res["béta case"].status == "failed" and "disk is full" in res["béta case"].error
    assert res["gamma"].status == "not-run" and res["gamma"].error.startswith("not run")
    assert (out / "alpha" / ".done.json").read_bytes() == done_before
    assert not temp_leftovers(out)
