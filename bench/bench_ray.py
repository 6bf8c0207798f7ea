"""Batch throughput on Ray (``liverseg --ray``) against the single-process batch, and the driver's cost.

Each variant runs in its own process (a fresh Ray each time) on copies of one phantom CT:

- ``single``: ``run_batch`` in one process with all the threads (the plain ``liverseg``);
- ``ray A x T``: ``run_batch_ray`` with A workers of T threads each.

Variants run ``--rounds`` times in alternating order (the load of a shared machine changes by the
minute; the load average is printed beside each row). Printed per variant: cases per minute over the whole run (Ray start, model loads included) and
in steady state (after every worker's first case: ``(N - A) / (t_last - t_A)``), the mean time a
case spends in its worker (``seconds_total``), and the driver's own CPU seconds per case.

Driver overhead per case (second table): tiny cases (40x64x64, threshold bundle) through one worker,
so a case's work is ~0.1 s and the rest of the steady-state interval between two results is what the
driver and Ray add: ``(t_last - t_first) / (N - 1)`` minus the mean ``seconds_total`` of the N - 1 warm
cases. The driver's CPU per case includes Ray's own threads in the driver process.

    python bench/bench_ray.py --threads 2 [--cases 8] [--quick] [--save]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def child(args) -> None:
    """One variant, in this process: prints a JSON line with the timings."""
    from LiverCTSegmentationLib.batch import BatchOptions, run_batch, run_batch_ray

    options = BatchOptions(device="cpu", overlay=False, threads=args.child_threads)
    done: list[float] = []
    out = Path(args.child_out)
    shutil.rmtree(out, ignore_errors=True)
    cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    on_done = lambda r: done.append(time.perf_counter() - t0)  # noqa: E731
    if args.child_actors:
        results = run_batch_ray(args.child_in, out, options, args.child_model, on_case_done=on_done,
                                actors=args.child_actors)
    else:
        results = run_batch(args.child_in, out, options, args.child_model, on_case_done=on_done)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    bad = [(r.case, r.error) for r in results if r.status != "ok"]
    if bad:
        sys.exit(f"cases failed: {bad}")
    print("BENCH " + json.dumps({
        "done": sorted(done), "case_s": [r.seconds_total for r in results],
        "driver_cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)}))


def run_variant(inputs: Path, out: Path, model: Path, actors: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child-in", inputs, "--child-out", out, "--child-model", model,
           "--child-actors", actors, "--child-threads", threads]
    load = os.getloadavg()[0]
    p = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=C.child_env(threads), timeout=3600)
    line = next((x for x in p.stdout.splitlines() if x.startswith("BENCH ")), None)
    if p.returncode or line is None:
        sys.exit(f"variant actors={actors} failed ({p.returncode}): {p.stderr[-2000:]}")
    d = json.loads(line[6:])
    d["load"] = (load + os.getloadavg()[0]) / 2
    return d


def throughput_row(name: str, d: dict, actors: int) -> list:
    done, n = d["done"], len(d["done"])
    a = max(actors, 1)
    steady = (n - a) / (done[-1] - done[a - 1]) * 60 if n > a and done[-1] > done[a - 1] else float("nan")
    return [name, n, n / done[-1] * 60, steady, sum(d["case_s"]) / n, d["driver_cpu_s"] / n, d["load"]]


def copies(src: Path, folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        dst = folder / f"case{i:03d}.nii.gz"
        if not dst.exists():
            shutil.copyfile(src, dst)  # copies, not links: each is its own case
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads in all (split among the workers)")
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--tiny-cases", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2,
                    help="run the variants this many times, in alternating order (a shared machine's load varies)")
    ap.add_argument("--model", help="model name or folder (default: the bundled default)")
    for name in ("in", "out", "model", "actors", "threads"):
        ap.add_argument(f"--child-{name}", help=argparse.SUPPRESS)
    C.add_case_args(ap)
    args = ap.parse_args(argv)
    if args.child_in:
        args.child_actors, args.child_threads = int(args.child_actors), int(args.child_threads)
        child(args)
        return 0

    work, shape, spacing, ct, _ = C.case_from_args(args)
    model, note = C.resolve_bundle(args.model, work)
    inputs = copies(ct, work / f"ray_in_{ct.name.split('.')[0]}_{args.cases}", args.cases)
    t = args.threads
    variants = [("single process", 0, t), (f"ray 1 x {t} threads", 1, t)]
    if t >= 2:
        variants.append((f"ray 2 x {t // 2} thread{'s' if t // 2 > 1 else ''}", 2, t // 2))
    rows = []
    for r in range(args.rounds):
        for name, actors, threads in variants if r % 2 == 0 else variants[::-1]:
            d = run_variant(inputs, work / "ray_out", model, actors, threads)
            rows.append(throughput_row(f"{name} (round {r + 1})", d, actors))
            print(rows[-1], flush=True)
    rows.sort(key=lambda row: row[0])

    from bundle_fixtures import make_box_bundle
    from test_batch import write_case

    tiny_model = make_box_bundle(work / "ray_box", liver_hu=(60.0, 200.0), tumor_hu=None, two_stage=False,
                                 coarse_spacing=6.0)
    tiny = work / f"ray_tiny_{args.tiny_cases}"
    tiny.mkdir(parents=True, exist_ok=True)
    src = write_case(work / "ray_tiny_src.nii.gz", seed=1)
    copies(src, tiny, args.tiny_cases)
    over = []
    for r, (name, actors) in enumerate((("single process", 0), ("ray 1 worker", 1)) * args.rounds):
        d = run_variant(tiny, work / "ray_tiny_out", tiny_model, actors, 1)
        done, n = d["done"], len(d["done"])
        interval = (done[-1] - done[0]) / (n - 1)  # one worker: each interval holds one case (not the 1st)
        case_s = sum(sorted(d["case_s"])[:-1]) / (n - 1)  # the slowest is the cold first case
        over.append([f"{name} (round {r // 2 + 1})", n, interval * 1000, case_s * 1000, (interval - case_s) * 1000,
                     d["driver_cpu_s"] / n * 1000, d["load"]])

    text = "\n".join([
        f"## Batch on Ray: {args.cases} copies of a {'x'.join(map(str, shape[::-1]))} phantom CT, device cpu, "
        f"{t} threads in all",
        "", f"`{' '.join(['python', 'bench/bench_ray.py'] + (argv if argv is not None else sys.argv[1:]))}`",
        "", C.machine_line(t), "", note, "",
        C.table(rows, ["variant", "cases", "cases/min (all)", "cases/min (steady)", "s per case in worker",
                       "driver CPU s/case", "load avg"]),
        "", f"Driver overhead: {args.tiny_cases} tiny cases (40x64x64, threshold bundle), 1 thread", "",
        C.table(over, ["variant", "cases", "ms between results", "ms per case in worker", "overhead ms/case",
                       "driver CPU ms/case", "load avg"]),
    ])
    C.report(text, args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
