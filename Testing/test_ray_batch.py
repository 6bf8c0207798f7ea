"""The batch on Ray (batch/ray_run.py): a local Ray cluster with 2 CPU workers gives the labels and
report of the single-process batch; a worker killed mid-case has its case redone exactly once (twice:
the case fails, the others go on); a driver killed with SIGKILL resumes; a cancel leaves no partial
outputs; the pool is sized from the cluster; a missing Ray says what to install."""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_batch import box_bundle, need_engine, read_report, temp_leftovers, write_case

from LiverCTSegmentationLib.batch import BatchOptions, run_batch
from LiverCTSegmentationLib.batch.ray_cluster import RayUnavailable, check_ray_args, import_ray, plan_pool
from LiverCTSegmentationLib.engine.errors import Cancelled

ROOT = Path(__file__).resolve().parents[1]
FAST = BatchOptions(device="cpu", overlay=False)
# With the overlay, a worker killed at its "overlay" stage leaves a label, .seg.nrrd and lesion CSV
# but no stats or .done.json: the partial state a real crash leaves.
PICTURES = BatchOptions(device="cpu", overlay=True)
# Columns that depend on when and how fast a case ran, not on what it computed.
TIMING = ("finished_at",)


# ------------------------------------------------------------------ no Ray needed
def test_pool_is_one_worker_per_gpu_or_cpus_over_threads():
    gpu = plan_pool({"CPU": 64, "GPU": 8}, "auto")
    assert (gpu.actors, gpu.num_gpus, gpu.num_cpus, gpu.threads) == (8, 1.0, 8.0, 8)
    assert plan_pool({"CPU": 64, "GPU": 8}, "auto", actors=2).actors == 2
    cpu = plan_pool({"CPU": 64, "GPU": 8}, "cpu")  # --device cpu leaves the GPUs alone
    assert (cpu.actors, cpu.num_gpus, cpu.threads, cpu.device) == (16, 0.0, 4, "cpu")
    two = plan_pool({"CPU": 2}, "auto", actors=2)  # the bench's 2 workers on this 2-core machine
    assert (two.actors, two.threads, two.num_cpus) == (2, 1, 1.0)
    over = plan_pool({"CPU": 2}, "auto", actors=4)  # all placed: each reserves its share
    assert over.actors == 4 and over.num_cpus == 0.5 and over.threads == 1
    grow = plan_pool({"CPU": 0}, "auto", actors=8, threads=4)  # autoscaling: asks for what it needs
    assert (grow.actors, grow.num_cpus, grow.threads) == (8, 4.0, 4)
    with pytest.raises(RayUnavailable, match="no GPU"):
        plan_pool({"CPU": 8}, "cuda")


def test_cli_ray_option_gives_an_input_file_back():
    args = argparse.Namespace(ray="ct.nii.gz", ray_actors=None, inputs=["b.nii.gz"])
    assert check_ray_args(args) == "" and args.ray == "local" and args.inputs == ["ct.nii.gz", "b.nii.gz"]
    for address in ("auto", "ray://head:10001", "10.0.0.5:6379", "local"):
        args = argparse.Namespace(ray=address, ray_actors=2, inputs=[])
        assert check_ray_args(args) == "" and args.ray == address and args.inputs == []
    assert "needs --ray" in check_ray_args(argparse.Namespace(ray=None, ray_actors=2, inputs=[]))


def test_missing_ray_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(RayUnavailable, match=r"pip install 'liverct-segmentation\[cluster\]'"):
        import_ray()
    need_engine()
    from LiverCTSegmentationLib.batch import cli

    _cases(tmp_path / "in", 1)
    rc = cli.main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(box_bundle(tmp_path / "m")),
                   "--device", "cpu", "--ray", "-q"])
    assert rc == 2
    assert not (tmp_path / "out" / "case0").exists()  # refused before any case ran


# --------------------------------------------------------------- a local cluster
@pytest.fixture(scope="module")
def ray_cluster():
    """Ray on this machine with 2 CPUs, as `ray start --head --num-cpus 2` would give."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[cluster]')")
    need_engine()
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             object_store_memory=100 * 2**20)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    need_engine()
    return box_bundle(tmp_path_factory.mktemp("model") / "box")


def _cases(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_case(folder / f"case{i}.nii.gz", seed=i)
    return folder


def _labels(out: Path, case: str) -> np.ndarray:
    from LiverCTSegmentationLib.engine import io

    return io.read_volume(out / case / f"{case}_label.nii.gz").array


def _rows(report: Path) -> dict[str, dict]:
    rows = read_report(report)
    assert len({r["case"] for r in rows}) == len(rows), "a case is listed twice"
    return {r["case"]: {k: v for k, v in r.items() if k not in TIMING and not k.startswith("seconds_")}
            for r in rows}


def test_two_workers_give_the_single_process_labels_and_report(ray_cluster, model, tmp_path):
    from LiverCTSegmentationLib.batch.ray_run import run_batch_ray

    inputs = _cases(tmp_path / "in", 4)
    ref = run_batch(inputs, tmp_path / "single", FAST, model)
    shown = []
    got = run_batch_ray(inputs, tmp_path / "ray", FAST, model, actors=2, progress=lambda f, s: shown.append((f, s)))
    assert [(r.case, r.status) for r in got] == [(r.case, "ok") for r in ref], [(r.case, r.error) for r in got]
    for r in ref:
        assert np.array_equal(_labels(tmp_path / "ray", r.case), _labels(tmp_path / "single", r.case)), r.case
        assert got[[g.case for g in got].index(r.case)].statistics == r.statistics
    assert _rows(tmp_path / "ray" / "report.csv") == _rows(tmp_path / "single" / "report.csv")
    assert shown[0][1].startswith("starting 2 Ray workers") and shown[-1] == (1.0, "done")
    assert not temp_leftovers(tmp_path / "ray")

    again = run_batch_ray(inputs, tmp_path / "ray", FAST, model, actors=2)  # resume: verified, not redone
    assert [r.status for r in again] == ["skipped"] * 4


@pytest.mark.timeout(180)
def test_workers_the_cluster_cannot_place_never_hold_cases(ray_cluster, model, tmp_path):
    """3 workers of 2 threads on 2 CPUs: one is placed, two wait forever; the batch ends on the one."""
    from LiverCTSegmentationLib.batch.ray_run import run_batch_ray

    inputs = _cases(tmp_path / "in", 3)
    shown = []
    got = run_batch_ray(inputs, tmp_path / "out", BatchOptions(device="cpu", overlay=False, threads=2), model,
                        actors=3, progress=lambda f, s: shown.append(s))
    assert [r.status for r in got] == ["ok"] * 3
    assert shown[0].startswith("starting 3 Ray workers (2 CPU threads each)")


class _NoPackageWorker:
    """What a node without the package gives: the worker dies while it is created."""

    def __init__(self, *args) -> None:
        raise ImportError("No module named 'LiverCTSegmentationLib'")

    def identity(self) -> dict:
        return {}


def test_workers_that_cannot_start_stop_the_batch_with_what_to_install(ray_cluster, model, tmp_path, monkeypatch):
    from LiverCTSegmentationLib.batch import ray_run

    monkeypatch.setattr(ray_run, "CaseWorker", _NoPackageWorker)
    with pytest.raises(RayUnavailable, match=r"could not start .*Install the same liverct-segmentation\[cluster\]"):
        ray_run.run_batch_ray(_cases(tmp_path / "in", 2), tmp_path / "out", FAST, model, actors=2)
    assert not list((tmp_path / "out").glob("case*/.done.json"))


def test_a_worker_killed_mid_case_has_it_redone_exactly_once(ray_cluster, model, tmp_path):
    from LiverCTSegmentationLib.batch.ray_run import run_batch_ray

    inputs = _cases(tmp_path / "in", 3)
    flags = tmp_path / "flags"
    flags.mkdir()
    got = run_batch_ray(inputs, tmp_path / "out", PICTURES, model, actors=2,
                        _hook=("case1", "overlay", "kill", str(flags), 1))
    assert (flags / "case1.0").exists(), "the test hook never killed the worker"
    assert [(r.case, r.status) for r in got] == [("case0", "ok"), ("case1", "ok"), ("case2", "ok")], \
        [(r.case, r.error) for r in got]
    rows = read_report(tmp_path / "out" / "report.csv")
    assert [r["case"] for r in rows] == ["case0", "case1", "case2"] and {r["status"] for r in rows} == {"ok"}
    assert not temp_leftovers(tmp_path / "out")  # the dead worker's lock and temp files are gone
    ref = run_batch(inputs / "case1.nii.gz", tmp_path / "single", PICTURES, model)
    assert ref[0].status == "ok"
    assert np.array_equal(_labels(tmp_path / "out", "case1"), _labels(tmp_path / "single", "case1"))


def test_a_case_whose_worker_dies_twice_fails_alone(ray_cluster, model, tmp_path):
    from LiverCTSegmentationLib.batch.ray_run import WORKER_DIED, run_batch_ray

    inputs = _cases(tmp_path / "in", 3)
    flags = tmp_path / "flags"
    flags.mkdir()
    got = run_batch_ray(inputs, tmp_path / "out", PICTURES, model, actors=2,
                        _hook=("case0", "overlay", "kill", str(flags), 2))
    assert {r.case: r.status for r in got} == {"case0": "failed", "case1": "ok", "case2": "ok"}
    assert got[0].error == WORKER_DIED and (flags / "case0.1").exists()
    rows = {r["case"]: r for r in read_report(tmp_path / "out" / "report.csv")}
    assert rows["case0"]["status"] == "failed" and rows["case0"]["label_path"] == ""
    case_dir = tmp_path / "out" / "case0"
    assert not (case_dir / ".done.json").exists() and not list(case_dir.glob("case0_*"))  # no partial outputs
    assert not temp_leftovers(tmp_path / "out")


def test_only_the_dead_workers_own_lock_is_removed(tmp_path):
    import json

    from LiverCTSegmentationLib.batch.ray_run import drop_lock_of

    case_dir = tmp_path / "case0"
    case_dir.mkdir()
    lock = case_dir / ".lock"
    lock.write_text(json.dumps({"pid": 4242, "host": "node-7", "started": 0}))
    assert not drop_lock_of(tmp_path, case_dir, {"pid": 4242, "host": "node-8"}) and lock.exists()
    assert not drop_lock_of(tmp_path, case_dir, {"pid": 4243, "host": "node-7"}) and lock.exists()
    assert drop_lock_of(tmp_path, case_dir, {"pid": 4242, "host": "node-7"}) and not lock.exists()
    assert drop_lock_of(tmp_path, case_dir, {"pid": 1, "host": "node-7"})  # no lock: free


def test_cancel_stops_the_case_in_progress_and_keeps_finished_ones(ray_cluster, model, tmp_path):
    """The worker holds case2 at its write stage until the cancel reaches it (it then writes part of its
    outputs before it checks for a cancel): the
    cancel must get there (not the pool's end after the grace time) and remove those outputs."""
    import threading

    from LiverCTSegmentationLib.batch.ray_run import CANCEL_GRACE_S, run_batch_ray

    inputs = _cases(tmp_path / "in", 5)
    flags = tmp_path / "flags"
    flags.mkdir()
    cancel = threading.Event()
    pressed = []

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + 120
        while not (flags / "case2.held").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        pressed.append(time.monotonic())
        cancel.set()

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    with pytest.raises(Cancelled):
        run_batch_ray(inputs, tmp_path / "out", PICTURES, model, actors=2, cancel_event=cancel,
                      _hook=("case2", "write", "hold", str(flags), 0))
    assert (flags / "case2.held").exists() and time.monotonic() - pressed[0] < CANCEL_GRACE_S / 2
    held = tmp_path / "out" / "case2"
    assert not (held / ".done.json").exists() and not list(held.glob("case2_*")), "partial outputs kept"
    assert "cancelled" in (held / ".result.json").read_text()
    assert not temp_leftovers(tmp_path / "out")  # no lock left: the worker cleaned up, not a kill
    rows = {r["case"]: r["status"] for r in read_report(tmp_path / "out" / "report.csv")}
    finished = {c for c, st in rows.items() if st == "ok"}
    assert finished & {"case0", "case1"}, rows  # case2 started after one of them was done

    again = run_batch_ray(inputs, tmp_path / "out", PICTURES, model, actors=2)
    assert {r.case for r in again if r.status == "skipped"} == finished and all(r.ok for r in again)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "LiverCTSegmentation"), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_driver_killed_then_rerun_skips_the_finished_cases(ray_cluster, model, tmp_path):
    """The first driver joins the running cluster (an address, as --ray auto would) and is killed with
    SIGKILL once a case is finished; the rerun starts its own Ray (--ray alone) and resumes."""
    inputs = _cases(tmp_path / "in", 8)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "LiverCTSegmentationLib.batch.cli", str(inputs), "-o", str(out), "--model",
           str(model), "--device", "cpu", "--no-overlay", "-q", "--ray-actors", "2"]
    first = subprocess.Popen(cmd + ["--ray", ray_cluster], env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("*/.done.json")):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "no case finished in 2 minutes"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    finished = {p.parent.name for p in out.glob("*/.done.json")}
    assert 0 < len(finished) < 8, finished

    second = subprocess.run(cmd + ["--ray"], env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    rows = {r["case"]: r["status"] for r in read_report(out / "report.csv")}
    assert sorted(rows) == [f"case{i}" for i in range(8)]
    assert {c for c, s in rows.items() if s == "skipped"} >= finished
    assert all(s in ("ok", "skipped") for s in rows.values()), rows
    assert not temp_leftovers(out)


def test_slicer_process_files_takes_the_ray_option(ray_cluster, model, tmp_path):
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    import slicer_fakes

    slicer_fakes.install_fakes()
    from LiverCTSegmentationLib.slicerui.logic import LiverCTSegmentationLogic

    inputs = _cases(tmp_path / "in", 2)
    shown = []
    got = LiverCTSegmentationLogic().processFiles(str(inputs), str(tmp_path / "out"), model=str(model),
                                                  device="cpu", overlay=False, ray="local",
                                                  progressCallback=lambda f, s: shown.append(s))
    assert [r.status for r in got] == ["ok", "ok"]
    assert any("Ray worker" in s for s in shown)  # it went through the pool, not the local runner


_SCONTROL = '#!/bin/bash\n# stub: `scontrol show hostnames LIST` -> one name per line\necho "$3" | tr , "\\n"\n'
_SRUN = """#!/bin/bash
# stub: drop srun's options (-w takes a value) and run the step's command on this machine
while [ $# -gt 0 ]; do
  case "$1" in -w) shift 2 ;; -*) shift ;; *) break ;; esac
done
exec "$@"
"""


def test_sbatch_script_starts_ray_and_segments_on_the_allocation(model, tmp_path):
    """scripts/cluster/ray.sbatch with SLURM's srun/scontrol stubbed to this machine (a 1-node job):
    the head starts, the job waits for it, liverseg joins it by address, and the job ends its Ray."""
    venv = Path(sys.executable).parent.parent
    if not (venv / "bin" / "ray").exists() or not (venv / "bin" / "liverseg").exists():
        pytest.skip(f"no ray/liverseg scripts in {venv} (pip install -e '.[cluster]')")
    import socket

    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, text in (("scontrol", _SCONTROL), ("srun", _SRUN)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**_env(), "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_NODELIST": "localhost",
           "SLURM_CPUS_PER_TASK": "2", "VENV": str(venv), "RAY_PORT": str(port)}
    env.pop("RAY_ADDRESS", None)
    inputs = _cases(tmp_path / "in", 3)
    script = ROOT / "scripts" / "cluster" / "ray.sbatch"
    job = subprocess.Popen(["bash", str(script), str(inputs), str(tmp_path / "out"),
                            "--model", str(model), "--device", "cpu", "--no-overlay", "-q"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        log, _ = job.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGTERM)
        log, _ = job.communicate()
    assert job.returncode == 0, log[-3000:]
    joined = re.search(r"ray: 1 of 1 nodes at (\S+):(\d+)", log)
    assert joined and int(joined[2]) == port, log[-3000:]
    rows = read_report(tmp_path / "out" / "report.csv")
    assert [(r["case"], r["status"]) for r in rows] == [(f"case{i}", "ok") for i in range(3)]
    time.sleep(1)
    with socket.socket() as s:  # the head's GCS port is closed: the job took its Ray down with it
        assert s.connect_ex((joined[1], port)) != 0
