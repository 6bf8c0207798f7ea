"""``liverseg`` on real CT (issue 15): time and peak RSS against the naive baseline and the I/O floor.

Cases, built from ``../shared/data/real`` (skipped, with a line saying so, when it is absent):

- ``chaos``: the CHAOS CT as shipped, 512x512x78 at 0.727x0.727x2.0 mm (a real liver, 1.4 L);
- ``chaos_150``: the same CT resampled (linear) to 512x512x150 at 0.8x0.8x2.0 mm, centred, air
  (-1024 HU) outside the original field of view: the ~150 slices the issue's 3 s target is stated for;
- ``chaos_300``: likewise at 512x512x300, 0.8x0.8x1.0 mm (the same field of view), so the liver box
  has its real size on a full-size grid. CHAOS covers only 156 mm in z: both resampled CHAOS cases are
  about half air slices, which the coarse pass still runs over;
- ``totalseg_300``: TotalSegmentator's example CT (3 mm, 366 x 303 x 336 mm, chest to pelvis) on the
  same 512x512x300 grid: the body fills the field of view and the whole liver is in it (an upsampled
  3 mm scan, so its texture is smoother than a real 0.8 mm one).

The resampled CTs are built once into ``--workdir`` (default /tmp/liverct-bench/real), never into
the repository.

Every variant runs in its own process (wall time, that process's peak RSS), in the same run,
``--repeat`` times (the run with the median time is shown, with the largest peak RSS of all):

- liverseg: the real command line, ``--json`` per-stage seconds, no overlay / .seg.nrrd / DICOM SEG;
- liverseg with the torch executor (``LIVERCT_FAST_UNET=0``, what 0.2 ran), with ``--compare-torch``:
  its labels against the default's (liver and tumour Dice);
- I/O floor: SimpleITK reads the CT and writes a uint8 .nii.gz labelmap of the same grid;
- naive MONAI baseline (``bench_end_to_end.naive_worker``: whole CT at the fine spacing, sliding window,
  probabilities to the native grid, arg-max there), unless ``--no-baseline``.

``--prefault-mb N`` runs, before every measured process (every variant alike), a process that
writes N MB of fresh memory and exits, so the guest's pages are backed by the host when the measured
process starts. Why: on a VM whose free memory goes back to the host (free page reporting, DAMON
reclaim), the first touch of a page costs a host fault; this VM took 6.8 s to write 512 MB once in a
fresh process and 0.09 s the next time. That cost lands on whichever stage first touches new memory,
and it is a property of the VM, not of the code. The run prints the cold rate it measured first.

``--isa avx2`` runs the children as on a CPU without AVX-512 (``ATEN_CPU_CAPABILITY=avx2``,
``ONEDNN_MAX_CPU_ISA=AVX2``, ``LIVERCT_NO_BF16=1``: no native bf16). The CPU features printed are
the children's: torch's capability, oneDNN's ISA line, and /proc/cpuinfo's flags.

    OMP_NUM_THREADS=2 python bench/bench_real_ct.py --threads 2 --isa avx2 --compare-torch --save
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

REAL = C.ROOT.parent / "shared" / "data" / "real"
CHAOS = REAL / "chaos_evalsample_ct.nii.gz"
# The resampled cases: name -> (size, spacing), i, j, k; one 410 x 410 x 300 mm field of view.
RESAMPLED = {"chaos_150": ((512, 512, 150), (0.8, 0.8, 2.0)), "chaos_300": ((512, 512, 300), (0.8, 0.8, 1.0)),
             "totalseg_300": ((512, 512, 300), (0.8, 0.8, 1.0))}
# The CT each resampled case is built from (default: CHAOS).
SOURCES = {"totalseg_300": REAL / "totalseg_example_ct.nii.gz"}
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "LIVERCT_NO_BF16": "1"}
# The targets on 2 cores: (seconds, MB) per case; ratios to the references.
TARGETS = {"chaos": (3.0, 1024.0), "chaos_150": (3.0, 1024.0), "chaos_300": (5.0, 1024.0),
           "totalseg_300": (5.0, 1024.0)}
TARGET_SPEEDUP, TARGET_IO_RATIO = 20.0, 3.0
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def build_resampled(work: Path, name: str) -> Path:
    """The case's source CT (``SOURCES``, default CHAOS) on the grid ``RESAMPLED[name]``, centred on it
    (cached in ``work``)."""
    import SimpleITK as sitk

    size, spacing = RESAMPLED[name]
    source = SOURCES.get(name, CHAOS)
    stem = "chaos" if source == CHAOS else name.rsplit("_", 1)[0]
    out = work / f"{stem}_{'x'.join(map(str, size))}_ct.nii.gz"
    if out.exists():
        return out
    src = sitk.ReadImage(str(source))
    centre = src.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in src.GetSize()])
    direction = src.GetDirection()
    half = [(n - 1) / 2.0 * s for n, s in zip(size, spacing)]
    d = [direction[0:3], direction[3:6], direction[6:9]]
    origin = [centre[r] - sum(d[r][c] * half[c] for c in range(3)) for r in range(3)]
    rs = sitk.Resample(src, size, sitk.Transform(), sitk.sitkLinear, origin, spacing, direction, -1024,
                       sitk.sitkInt16)
    tmp = out.with_name(out.name + ".part.nii.gz")
    sitk.WriteImage(rs, str(tmp), True)
    tmp.replace(out)
    return out


def io_floor_worker(ct: str, out: str, content: str) -> None:
    """Read the CT, write a uint8 labelmap of its grid (.nii.gz): what any tool must do. The voxels
    written are liverseg's labels (read first, untimed): an all-zero map would compress unfairly fast."""
    import numpy as np
    import SimpleITK as sitk

    labels = sitk.GetArrayFromImage(sitk.ReadImage(content)).astype(np.uint8)
    t = time.perf_counter()
    img = sitk.ReadImage(ct)
    t_read = time.perf_counter() - t
    t = time.perf_counter()
    lab = sitk.GetImageFromArray(labels)
    lab.CopyInformation(img)
    sitk.WriteImage(lab, out, True)
    print(json.dumps({"read": t_read, "write": time.perf_counter() - t}))


def cpu_flags() -> dict:
    """Which of ``FLAGS`` /proc/cpuinfo lists (all False where there is no /proc/cpuinfo)."""
    flags: set = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            flags = set(next(line for line in fh if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        pass
    return {f: f in flags for f in FLAGS}


def rerun_with_isa(args, script: str, argv: list) -> Optional[int]:
    """With ``--isa avx2``: ``script`` run again with ``AVX2_ENV`` set (it must be set before torch
    loads), and its exit code; None when no re-run is needed (native, or this is the re-run)."""
    import subprocess

    if args.isa != "avx2" or all(os.environ.get(k) == v for k, v in AVX2_ENV.items()):
        return None
    env = dict(os.environ, **AVX2_ENV, OMP_NUM_THREADS=str(args.threads))
    return subprocess.run([sys.executable, script, *argv], env=env).returncode


def emulated_env() -> dict:
    """The ``AVX2_ENV`` variables this process runs with (empty at the native ISA)."""
    return {k: os.environ[k] for k in AVX2_ENV if k in os.environ}


def chaos_missing() -> bool:
    """True (and a SKIP line printed) when the CHAOS CT every real-CT bench starts from is absent."""
    if CHAOS.exists():
        return False
    print(f"SKIP: {CHAOS} is absent (the real CTs live in ../shared/data/real beside the repository).")
    return True


def case_ct(work: Path, name: str) -> Path:
    """The CT of case ``name``: CHAOS as shipped for "chaos", else the resampled case built in ``work``."""
    return CHAOS if name == "chaos" else build_resampled(work, name)


def features_worker() -> None:
    """The CPU features this process (with its environment) sees."""
    import subprocess

    import torch

    from LiverCTSegmentationLib.engine.device import use_bf16

    code = "import torch; torch.nn.functional.conv3d(torch.ones(2, 4, 8, 8, 8), torch.ones(8, 4, 3, 3, 3))"
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    verbose = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout
    isa = next((ln.split("isa:", 1)[1] for ln in verbose.splitlines() if ",info,cpu,isa:" in ln), "unknown")
    print(json.dumps({"torch_capability": str(torch.backends.cpu.get_cpu_capability()), "onednn_isa": isa,
                      "bf16_used": bool(use_bf16("cpu")), "flags": cpu_flags(),
                      "emulated": emulated_env()}))


def touch_worker(mb: int) -> None:
    """Write ``mb`` MB of fresh memory; print the seconds it took."""
    import numpy as np

    t = time.perf_counter()
    a = np.ones(int(mb) << 20, dtype=np.uint8)  # every byte written: every page touched
    print(json.dumps({"mb": int(mb), "seconds": time.perf_counter() - t, "check": int(a[-1])}))


def touch(mb: int) -> float:
    """Seconds a fresh process took to write ``mb`` MB (see ``--prefault-mb``)."""
    m = C.measure([sys.executable, __file__, "--touch-worker", str(int(mb))], 1)
    if m.returncode != 0:
        sys.exit(f"touch worker failed (exit {m.returncode}):\n{m.stderr[-2000:]}")
    return float(json.loads(m.stdout.strip().splitlines()[-1])["seconds"])


PREFAULT_SECONDS: list = []  # the touch times before the measured processes (for the report)


def child(args, extra: Optional[dict] = None) -> dict:
    env = dict(AVX2_ENV) if args.isa == "avx2" else {}
    env.update(extra or {})
    return env


def run(cmd: list, args, extra: Optional[dict] = None, prefault: bool = True) -> C.Measured:
    saved = {k: os.environ.get(k) for k in child(args, extra)}
    if args.prefault_mb and prefault:
        PREFAULT_SECONDS.append(touch(args.prefault_mb))
    os.environ.update(child(args, extra))  # C.measure copies os.environ into the child's
    try:
        m = C.measure(cmd, args.threads)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if m.returncode != 0:
        sys.exit(f"{cmd[1:3]} failed (exit {m.returncode}):\n{m.stderr[-3000:]}")
    return m


def median_run(fn, n: int) -> tuple[C.Measured, dict]:
    """``fn()`` -> (Measured, result) ``n`` times: the run with the median compute time, and the
    largest peak RSS of all (time is noisy on a shared machine, memory is not)."""
    runs = [fn() for _ in range(max(1, n))]
    runs.sort(key=lambda r: sum(float(v) for v in r[1]["timings"].values()))
    m, res = runs[len(runs) // 2]
    peak = max(r[0].peak_rss_mb for r in runs)
    return C.Measured(m.wall_s, peak, m.returncode, m.stdout, m.stderr), res


def liverseg(ct: Path, out: Path, args, extra: Optional[dict] = None) -> tuple[C.Measured, dict]:
    cmd = [sys.executable, "-m", "LiverCTSegmentationLib.batch.cli", ct, "-o", out, "--device", "cpu",
           "--threads", str(args.threads), "--no-overlay", "--no-seg-nrrd", "--no-dicom-seg", "--quiet", "--json",
           "--overwrite"]
    if args.model:
        cmd += ["--model", args.model]
    m = run(cmd, args, extra)
    return m, C.cli_json(m.stdout)[0]


def bench_case(name: str, ct: Path, work: Path, args) -> tuple[list, list]:
    """(table rows, verdict lines) of one case."""
    import bench_end_to_end as E

    from LiverCTSegmentationLib import models

    out = work / f"out_{name}"
    m, res = median_run(lambda: liverseg(ct, out, args), args.repeat)
    label = out / res["outputs"]["label"]
    stages = {k: round(float(v), 2) for k, v in res["timings"].items()}
    compute = sum(stages.values())
    def io_floor() -> tuple[C.Measured, dict]:
        f = run([sys.executable, __file__, "--io-floor-worker", ct, work / f"floor_{name}.nii.gz", label], args)
        return f, {"timings": json.loads(f.stdout.strip().splitlines()[-1])}

    floor, fres = median_run(io_floor, args.repeat)
    floor_s = sum(fres["timings"].values())
    rows = [[f"{name}: liverseg", m.wall_s, compute, m.peak_rss_mb, "", ""],
            [f"{name}: I/O floor (ITK read + uint8 .nii.gz write)", floor.wall_s, floor_s, floor.peak_rss_mb, "", ""]]
    lines = [f"{name} liverseg stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())]
    if args.compare_torch:
        mt, rt = median_run(lambda: liverseg(ct, work / f"out_{name}_torch", args, {"LIVERCT_FAST_UNET": "0"}),
                            args.repeat)
        dl, dt = C.dice_pair(label, work / f"out_{name}_torch" / rt["outputs"]["label"])
        t_compute = sum(float(v) for v in rt["timings"].values())
        rows.append([f"{name}: liverseg, torch executor (0.2)", mt.wall_s, t_compute, mt.peak_rss_mb, dl, dt])
        lines.append(f"{name} torch-executor stages (s): "
                     + ", ".join(f"{k} {float(v):.2f}" for k, v in rt["timings"].items()))
    verdict = []
    if not args.no_baseline:
        model = Path(args.model) if args.model else Path(models.resolve_model(None))
        nm = run([sys.executable, E.__file__, "--naive-worker", ct, model, work / f"naive_{name}.nii.gz",
                  "--device", "cpu", "--threads", str(args.threads), "--overlap", "0.5"], args)
        nres = json.loads(nm.stdout.strip().splitlines()[-1])
        ncompute = sum(nres["timings"].values())
        dl, dt = C.dice_pair(label, work / f"naive_{name}.nii.gz")
        rows.append([f"{name}: naive MONAI ({nres['stage']} net, grid {nres['grid']})", nm.wall_s, ncompute,
                     nm.peak_rss_mb, dl, dt])
        speed = ncompute / max(compute, 1e-9)
        verdict.append(f"naive / liverseg x{speed:.1f} (>= {TARGET_SPEEDUP:g}: {'PASS' if speed >= TARGET_SPEEDUP else 'FAIL'})")
    io_ratio = compute / max(floor_s, 1e-9)
    verdict.append(f"liverseg / I/O floor x{io_ratio:.2f} (<= {TARGET_IO_RATIO:g}: "
                   f"{'PASS' if io_ratio <= TARGET_IO_RATIO else 'FAIL'})")
    t_s, t_mb = TARGETS[name]
    verdict.append(f"{compute:.2f} s <= {t_s:g} s: {'PASS' if compute <= t_s else 'FAIL'}")
    verdict.append(f"peak RSS {m.peak_rss_mb:.0f} MB <= {t_mb:.0f} MB: {'PASS' if m.peak_rss_mb <= t_mb else 'FAIL'}")
    return rows, lines + [f"{name} targets: " + "; ".join(verdict)]


def load_line() -> str:
    try:
        return "load average (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "load average: unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="bundle folder/name (default: the bundled default model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa", choices=["native", "avx2"], default="native",
                    help="avx2: run as on a CPU without AVX-512 / AMX / native bf16")
    ap.add_argument("--cases", default="chaos,chaos_150,chaos_300,totalseg_300")
    ap.add_argument("--repeat", type=int, default=3, help="runs per variant (median time, largest peak RSS); "
                                                           "the naive baseline runs once")
    ap.add_argument("--compare-torch", action="store_true", help="also run the torch executor, Dice against it")
    ap.add_argument("--no-baseline", action="store_true", help="skip the naive MONAI baseline (minutes)")
    ap.add_argument("--workdir", default="/tmp/liverct-bench/real")
    ap.add_argument("--save", action="store_true", help="append the output to bench/RESULTS.md")
    ap.add_argument("--prefault-mb", type=int, default=0,
                    help="before every measured process, a process writes this many MB of fresh memory "
                         "(VMs that return free memory to the host; see the module doc); 0: off")
    ap.add_argument("--touch-worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--io-floor-worker", nargs=3, metavar=("CT", "OUT", "LABELS"), help=argparse.SUPPRESS)
    ap.add_argument("--features-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.io_floor_worker:
        io_floor_worker(*map(str, args.io_floor_worker))
        return 0
    if args.features_worker:
        features_worker()
        return 0
    if args.touch_worker:
        touch_worker(args.touch_worker)
        return 0
    if chaos_missing():
        return 0
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cases = args.cases.split(",")
    unknown = [c for c in cases if c != "chaos" and c not in RESAMPLED]
    if unknown:
        sys.exit(f"Unknown case(s) {unknown}: choose from chaos, {', '.join(RESAMPLED)}.")
    cts = {c: case_ct(work, c) for c in cases}
    PREFAULT_SECONDS.clear()  # this run's touches only
    cold = [touch(512) for _ in range(2)]  # first the machine's cold first-touch cost, then warm
    feats = json.loads(run([sys.executable, __file__, "--features-worker"], args, prefault=False).stdout.strip().splitlines()[-1])
    lines = ["## Real CT: " + ", ".join(args.cases.split(",")) + f" (isa {args.isa})", "",
             "command: `" + " ".join(["python bench/bench_real_ct.py"] + list(argv or sys.argv[1:])) + "`",
             f"machine: {C.machine_line(args.threads)}",
             "CPU features of the runs: torch capability {torch_capability}, oneDNN ISA {onednn_isa}, bf16 used "
             "{bf16_used}; /proc/cpuinfo {flags}; emulation env {emulated}".format(**feats),
             f"first touch of fresh memory, 512 MB written by a fresh process, twice in a row: "
             f"{cold[0]:.2f} s, then {cold[1]:.2f} s",
             f"{load_line()} (before)"]
    rows, notes = [], []
    for name in cases:
        r, n = bench_case(name, cts[name], work, args)
        rows += r
        notes += n
    lines += ["", C.table(rows, ["variant", "process wall s", "compute s (sum of stages)", "peak RSS MB",
                                 "Dice liver vs liverseg", "Dice tumour vs liverseg"]), ""] + notes
    if PREFAULT_SECONDS:
        lines += ["", f"prefault: each of the {len(PREFAULT_SECONDS)} measured processes (every variant) was "
                      f"preceded by a process writing {args.prefault_mb} MB: {min(PREFAULT_SECONDS):.2f}-"
                      f"{max(PREFAULT_SECONDS):.2f} s per touch (not counted in any variant)"]
    lines += ["", f"{load_line()} (after)"]
    C.report("\n".join(lines), args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
