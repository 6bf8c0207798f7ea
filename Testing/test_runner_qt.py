"""The Slicer GUI runner (``BackgroundSegmentation``) driven by a real event loop.

``qt`` is replaced by ``slicer_fakes.pyside_qt()``: PySide6's real QProcess and
QTimer with PythonQt's spelling, pumped with ``app.processEvents()`` as Slicer's
main loop would. The worker is started through a ``PythonSlicer``-like launcher
that runs the real worker as a child process. MRML is real (slicer-core).
Covered: a run that finishes and imports segments + statistics, Cancel (the
"cancelled" outcome, and the whole process tree killed), a crashing worker
(readable message), and the temp folder removed in every case; the kept worker
(``worker.py --serve``, ``worker_host.py``): reused by the next Apply, stopped
by Cancel, leaves when idle, restarted after either.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
pytest.importorskip("PySide6", reason="PySide6 is not installed")
pytest.importorskip("psutil")

import slicer_fakes  # noqa: E402

slicer_fakes.install_fakes()

from LiverCTSegmentationLib.engine import pipeline  # noqa: E402
from LiverCTSegmentationLib.engine.bundle import ModelBundle  # noqa: E402
from LiverCTSegmentationLib.slicerui import mrml_convert  # noqa: E402
from LiverCTSegmentationLib.slicerui.logic import TABLE_REFERENCE_ROLE, LiverCTSegmentationLogic  # noqa: E402
from LiverCTSegmentationLib.slicerui.runner import WORKER_SCRIPT, BackgroundSegmentation, qprocess_pid  # noqa: E402
from LiverCTSegmentationLib.slicerui.stages import STAGE_NAMES  # noqa: E402


@pytest.fixture
def qt_app(monkeypatch):
    qt, app = slicer_fakes.pyside_qt()
    monkeypatch.setitem(sys.modules, "qt", qt)
    return app


@pytest.fixture(scope="module")
def box_bundle(tmp_path_factory):
    from bundle_fixtures import make_box_bundle

    return ModelBundle.load(make_box_bundle(tmp_path_factory.mktemp("box"), liver_hu=(80.0, 200.0),
                                            tumor_hu=(20.0, 60.0)))


def add_ct(scene):
    """A small CT node: fat body, a liver box (130 HU) holding a tumour box (40 HU)."""
    arr = np.full((28, 40, 44), -80, dtype=np.int16)
    arr[6:22, 8:32, 6:30] = 130
    arr[10:16, 14:22, 12:20] = 40
    ijk_to_ras = np.diag([-2.5, -2.5, 3.0, 1.0])
    ijk_to_ras[:3, 3] = [40.0, 20.0, -30.0]
    return slicer.util.addVolumeFromArray(arr, ijk_to_ras, name="ct")


class Recorder:
    """Collects the runner's callbacks."""

    def __init__(self) -> None:
        self.progress: list[tuple[float, str]] = []
        self.warnings: list[str] = []
        self.finished = None  # (segmentation node, statistics, error)

    def on_progress(self, fraction: float, stage: str) -> None:
        self.progress.append((fraction, stage))

    def on_finished(self, seg, stats, error) -> None:
        self.finished = (seg, stats, error)


def make_run(scene, tmp_path, rec: Recorder, target_script: str, model: str = "") -> BackgroundSegmentation:
    run = BackgroundSegmentation(
        LiverCTSegmentationLogic(), add_ct(scene), model=model, device="cpu",
        onProgress=rec.on_progress, onWarning=rec.warnings.append, onFinished=rec.on_finished,
        python=sys.executable, script=slicer_fakes.write_launcher(tmp_path, target_script))
    run.POLL_MS = 20
    return run


def pump(app, until, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out waiting for the background run"
        app.processEvents()
        time.sleep(0.01)


def launcher_child_pid(run: BackgroundSegmentation) -> int:
    child = next(e for e in run.events if e.kind == slicer_fakes.LAUNCHER_EVENT)
    return int(child.data["pid"])


def test_run_finishes_and_imports_segments(qt_app, scene, tmp_path, box_bundle):
    rec = Recorder()
    run = make_run(scene, tmp_path, rec, WORKER_SCRIPT, model=str(box_bundle.path))
    run.start()
    temp_dir = run.temp_dir
    assert temp_dir and os.path.isdir(temp_dir)
    # The hand-over file is raw: gzip would cost seconds per Apply for a full-size CT.
    import nrrd

    assert nrrd.read_header(os.path.join(temp_dir, "input.nrrd"))["encoding"] == "raw"
    pump(qt_app, lambda: rec.finished is not None)

    seg, stats, error = rec.finished
    assert error is None
    assert not run.running
    assert not os.path.exists(temp_dir), "the temp folder must be removed"
    expected = pipeline.segment(mrml_convert.volume_from_node(run.inputVolumeNode), box_bundle,
                                pipeline.SegmentOptions(device="cpu")).labelmap
    segmentation = seg.GetSegmentation()
    names = [segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName()
             for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["Liver", "Liver tumor"]
    for value, name in ((1, "Liver"), (2, "Liver tumor")):
        got = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentation.GetSegmentIdBySegmentName(name),
                                                         run.inputVolumeNode)
        want = expected.array == value
        assert want.sum() > 0
        np.testing.assert_array_equal(got > 0, want)
    assert stats["tumor_count"] >= 1 and stats["liver_ml"] > 0
    table = seg.GetNodeReference(TABLE_REFERENCE_ROLE)
    assert table is not None and table.GetCellText(0, 0) == "Liver"
    # Progress: known stage names, never backwards, ends with "done" at 1.0.
    fractions = [f for f, _ in rec.progress]
    assert fractions == sorted(fractions), rec.progress
    assert rec.progress[-1] == (1.0, "done")
    assert {"starting", "coarse", "fine", "importing"} <= {s for _, s in rec.progress}
    unknown = {s for _, s in rec.progress} - set(STAGE_NAMES)
    assert not unknown, f"stages without a readable name: {unknown}"


def test_cancel_reports_cancelled_and_kills_the_process_tree(qt_app, scene, tmp_path):
    rec = Recorder()
    hanging = slicer_fakes.write_script(tmp_path, "hanging_worker.py", slicer_fakes.HANGING_WORKER)
    run = make_run(scene, tmp_path, rec, hanging)
    run.start()
    temp_dir = run.temp_dir
    pump(qt_app, lambda: any(s == "coarse" for _, s in rec.progress), timeout=60)
    launcher_pid, child_pid = qprocess_pid(run.process), launcher_child_pid(run)
    try:
        assert launcher_pid and child_pid != launcher_pid
        run.cancel()
        seg, stats, error = rec.finished
        assert seg is None and stats is None and "cancelled" in error.lower()
        assert not run.running
        assert not os.path.exists(temp_dir)
        deadline = time.monotonic() + 10
        while not (slicer_fakes.process_gone(launcher_pid) and slicer_fakes.process_gone(child_pid)):
            assert time.monotonic() < deadline, "Cancel left the launcher or its child (the real worker) running"
            time.sleep(0.05)
        run.cancel()  # a second Cancel is harmless
        assert rec.finished == (None, None, error)
    finally:
        import psutil

        for pid in (child_pid, launcher_pid):  # never leave a sleeper behind, even when the test fails
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass


def test_worker_crash_gives_readable_message(qt_app, scene, tmp_path):
    rec = Recorder()
    crashing = slicer_fakes.write_script(tmp_path, "crashing_worker.py", slicer_fakes.CRASHING_WORKER)
    run = make_run(scene, tmp_path, rec, crashing)
    run.start()
    temp_dir = run.temp_dir
    pump(qt_app, lambda: rec.finished is not None, timeout=60)
    seg, stats, error = rec.finished
    assert seg is None and stats is None
    assert "stopped unexpectedly" in error and "exit code 134" in error
    assert "Install dependencies" in error  # says what to do next
    assert "Segmentation fault" in error  # the tail of stderr, for a bug report
    assert "LIVERCT" not in error
    assert not os.path.exists(temp_dir)
    assert not scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems()


def test_worker_error_event_is_shown_as_is(qt_app, scene, tmp_path):
    """A worker's ``error`` event (user-actionable problem) reaches the panel word for word."""
    rec = Recorder()
    failing = slicer_fakes.write_script(tmp_path, "failing_worker.py", """
        import json, sys
        print("LIVERCT " + json.dumps({"event": "error", "code": "input", "message": "The CT has only 2 slices."}))
        sys.exit(2)
        """)
    run = make_run(scene, tmp_path, rec, failing)
    run.start()
    temp_dir = run.temp_dir
    pump(qt_app, lambda: rec.finished is not None, timeout=60)
    assert rec.finished == (None, None, "The CT has only 2 slices.")
    assert not os.path.exists(temp_dir)


def test_unknown_model_fails_at_start_without_leftovers(qt_app, scene, tmp_path):
    """A model that does not exist fails at start with the registry's message (no worker started)."""
    from LiverCTSegmentationLib.engine.errors import BundleError

    rec = Recorder()
    run = make_run(scene, tmp_path, rec, WORKER_SCRIPT, model="no-such-model-xyz")
    with pytest.raises(BundleError, match="no-such-model-xyz"):
        run.start()
    assert run.process is None and run.temp_dir is None and rec.finished is None


# ------------------------------------------------------------------ kept worker (worker.py --serve)
@pytest.fixture
def kept():
    from LiverCTSegmentationLib.slicerui import worker_host

    yield worker_host
    worker_host.stop_all()
    worker_host._HOSTS.clear()


def kept_apply(qt_app, scene, launcher: str, model: str, device: str = "cpu", wait: bool = True):
    """One Apply through the kept worker of ``launcher``; returns (run, recorder) once it finished."""
    rec = Recorder()
    run = BackgroundSegmentation(
        LiverCTSegmentationLogic(), add_ct(scene), model=model, device=device,
        onProgress=rec.on_progress, onWarning=rec.warnings.append, onFinished=rec.on_finished,
        python=sys.executable, script=launcher, keepWorker=True)
    run.POLL_MS = 20
    run.start()
    if wait:
        pump(qt_app, lambda: rec.finished is not None)
    return run, rec


def kept_host(kept, launcher: str, idle_seconds: float):
    host = kept.WorkerHost(sys.executable, launcher, idle_seconds=idle_seconds)
    kept._HOSTS[(sys.executable, launcher)] = host
    return host


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_kept_worker_serves_the_next_apply_without_restarting(qt_app, scene, tmp_path, box_bundle, kept):
    launcher = slicer_fakes.write_launcher(tmp_path, WORKER_SCRIPT)
    pids, temp_dirs = [], []
    for _ in range(2):
        run, rec = kept_apply(qt_app, scene, launcher, str(box_bundle.path), wait=False)
        temp_dirs.append(run.temp_dir)
        pump(qt_app, lambda: rec.finished is not None)
        seg, stats, error = rec.finished
        assert error is None and stats["liver_ml"] > 0
        segmentation = seg.GetSegmentation()
        got = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentation.GetSegmentIdBySegmentName("Liver"),
                                                         run.inputVolumeNode)
        want = pipeline.segment(mrml_convert.volume_from_node(run.inputVolumeNode), box_bundle,
                                pipeline.SegmentOptions(device="cpu")).labelmap.array == 1
        np.testing.assert_array_equal(got > 0, want)
        host = kept.host_for(sys.executable, launcher)
        assert host.alive, "the worker must stay up after its job"
        pids.append(host.pid())
    assert pids[0] == pids[1], "the second Apply must reuse the running worker"
    assert not any(os.path.exists(d) for d in temp_dirs), "each run's temp folder is removed"
    control = host.control_dir
    kept.stop_all()
    assert not host.alive and not os.path.exists(control)


def test_cancel_stops_the_kept_worker_and_the_next_apply_starts_a_new_one(qt_app, scene, tmp_path, box_bundle, kept):
    hang = slicer_fakes.write_script(tmp_path, "serve_then_hang.py", """
        import json, sys, time
        print("LIVERCT " + json.dumps({"event": "progress", "fraction": 0.1, "stage": "coarse"}), flush=True)
        time.sleep(600)
        """)
    launcher = slicer_fakes.write_launcher(tmp_path, hang)
    run, rec = kept_apply(qt_app, scene, launcher, str(box_bundle.path), wait=False)
    pump(qt_app, lambda: any(e.kind == "progress" for e in run.events))
    host = kept.host_for(sys.executable, launcher)
    child = launcher_child_pid(run)
    assert _alive(child)
    run.cancel()
    assert rec.finished[2] == BackgroundSegmentation.CANCELLED_MESSAGE
    assert not host.alive and not _alive(child), "Cancel kills the kept worker and its child"
    assert host.control_dir is None

    # The next Apply (real worker now) starts a fresh kept worker and finishes.
    (tmp_path / "real").mkdir()
    real = slicer_fakes.write_launcher(tmp_path / "real", WORKER_SCRIPT)
    _, rec2 = kept_apply(qt_app, scene, real, str(box_bundle.path))
    assert rec2.finished[2] is None and kept.host_for(sys.executable, real).alive


def test_kept_worker_leaves_when_idle_and_is_restarted(qt_app, scene, tmp_path, box_bundle, kept):
    launcher = slicer_fakes.write_launcher(tmp_path, WORKER_SCRIPT)
    host = kept_host(kept, launcher, idle_seconds=1.0)
    kept_apply(qt_app, scene, launcher, str(box_bundle.path))
    first = host.pid()
    pump(qt_app, lambda: not host.alive, timeout=30)  # idle for 1 s: the worker ends by itself
    _, rec2 = kept_apply(qt_app, scene, launcher, str(box_bundle.path))
    assert rec2.finished[2] is None and host.pid() != first


def test_a_failed_job_is_reported_and_the_kept_worker_serves_the_next(qt_app, scene, tmp_path, box_bundle, kept):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a usable CUDA GPU (the failing job asks for one)")
    launcher = slicer_fakes.write_launcher(tmp_path, WORKER_SCRIPT)
    _, rec = kept_apply(qt_app, scene, launcher, str(box_bundle.path), device="cuda")
    assert rec.finished[0] is None and "CUDA GPU was requested" in rec.finished[2]
    host = kept.host_for(sys.executable, launcher)
    assert host.alive, "a user-actionable error must not cost the loaded worker"
    first = host.pid()
    _, rec2 = kept_apply(qt_app, scene, launcher, str(box_bundle.path))
    assert rec2.finished[2] is None and host.pid() == first


def test_a_worker_near_its_idle_exit_is_replaced_not_reused(qt_app, scene, tmp_path, box_bundle, kept):
    # A job dropped just as the worker leaves for idleness would be lost: such a worker is replaced.
    launcher = slicer_fakes.write_launcher(tmp_path, WORKER_SCRIPT)
    host = kept_host(kept, launcher, idle_seconds=4.0)
    kept_apply(qt_app, scene, launcher, str(box_bundle.path))
    first = host.pid()
    time.sleep(kept.STALE_FRACTION * 4.0 + 0.1)  # measured from after the job: longer since its hand-over
    run2, rec2 = kept_apply(qt_app, scene, launcher, str(box_bundle.path), wait=False)
    assert host.pid() != first
    pump(qt_app, lambda: rec2.finished is not None)
    assert rec2.finished[2] is None


def test_kept_worker_holds_only_the_last_model(tmp_path, box_bundle):
    from bundle_fixtures import make_box_bundle
    from LiverCTSegmentationLib.slicerui import worker

    other = make_box_bundle(tmp_path / "other", liver_hu=(70.0, 190.0))
    bundles: dict = {}
    first = worker._cached_bundle(str(box_bundle.path), bundles)
    assert worker._cached_bundle(str(box_bundle.path), bundles) is first  # loaded once
    worker._cached_bundle(str(other), bundles)
    assert list(bundles) == [str(other)]
