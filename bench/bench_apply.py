"""What a Slicer Apply costs: a new worker process per Apply vs the kept worker (``worker.py --serve``).

Both run the real ``slicerui/worker.py`` on the 512x512x300 phantom CT handed over as a raw
.nrrd (what ``runner.py`` writes), N Applies each, and time each Apply from the moment the job
is handed over to the worker's ``done`` event:

- one-shot: ``SubprocessRun`` starts ``python worker.py --input ...`` (Python, torch and the model
  load every time);
- kept: one ``worker.py --serve DIR`` process; each job is dropped into DIR as job.json
  (``worker_host.py`` does the same from Slicer's Qt side).

    python bench/bench_apply.py --threads 2 [--device cpu] [--applies 3] [--save]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def one_shot(job: dict, env: dict) -> float:
    from LiverCTSegmentationLib.slicerui.runner import SubprocessRun

    t = time.perf_counter()
    run = SubprocessRun(job["input"], model=job["model"], device=job["device"], python=sys.executable,
                        temp_dir=tempfile.mkdtemp(prefix="bench-apply-"), env=env).start()
    code = run.wait(600)
    if code != 0 or run.result() is None:
        sys.exit(f"one-shot worker failed ({code}): {run.stderr_text[-500:]}")
    sec = time.perf_counter() - t
    run.cleanup()
    return sec


def kept_worker(jobs: list[dict], env: dict) -> list[float]:
    from LiverCTSegmentationLib.slicerui.runner import WORKER_SCRIPT

    control = Path(tempfile.mkdtemp(prefix="bench-apply-serve-"))
    proc = subprocess.Popen([sys.executable, WORKER_SCRIPT, "--serve", str(control)], stdout=subprocess.PIPE,
                            text=True, env=env)
    times = []
    try:
        t = time.perf_counter()  # the first job is handed over at once, as on the first Apply
        for n, job in enumerate(jobs):
            tmp = control / f".job{n}.tmp"
            tmp.write_text(json.dumps(job), encoding="utf-8")
            os.replace(tmp, control / "job.json")
            for line in proc.stdout:
                if line.startswith("LIVERCT "):
                    event = json.loads(line[8:])
                    if event["event"] == "error":
                        sys.exit(f"kept worker failed: {event}")
                    if event["event"] == "done":
                        break
            times.append(time.perf_counter() - t)
            t = time.perf_counter()
    finally:
        proc.kill()
        proc.wait()
        for p in control.iterdir():
            p.unlink()
        control.rmdir()
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--applies", type=int, default=3)
    C.add_case_args(ap)
    args = ap.parse_args(argv)

    from LiverCTSegmentationLib.engine import io

    work, shape, spacing, ct, _ = C.case_from_args(args)
    handover = io.write_volume(io.read_volume(ct), work / "apply_input.nrrd", overwrite=True, compress=False)
    model, note = C.resolve_bundle(None, work)
    env = C.child_env(args.threads)
    jobs = [{"input": str(handover), "output_dir": str(work / f"apply_out{n}"), "model": str(model),
             "device": args.device, "fast": False, "roi_lps": None, "threads": args.threads}
            for n in range(args.applies)]
    shot = [one_shot(j, env) for j in jobs]
    kept = kept_worker(jobs, env)
    rows = [[f"Apply {n + 1}", a, b, f"x{a / b:.1f}"] for n, (a, b) in enumerate(zip(shot, kept))]
    lines = [f"## Slicer Apply: {'x'.join(map(str, shape[::-1]))} voxels, device {args.device}", "",
             "command: `" + " ".join(["python bench/bench_apply.py"] + (argv or sys.argv[1:])) + "`",
             f"machine: {C.machine_line(args.threads)}", f"model: {model}"] + ([note] if note else []) + [
             "", "seconds from handing the job to the worker to its done event (the CT already written as raw "
             ".nrrd, as runner.py does):", "",
             C.table(rows, ["", "new worker per Apply", "kept worker", "speed-up"])]
    C.report("\n".join(lines), args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
