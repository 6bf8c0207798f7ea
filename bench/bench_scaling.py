"""How ``liverseg``'s time and peak memory grow with the number of slices.

Runs the real command line (own process each, peak RSS of that process) on
512x512 phantoms with 100, 300 and 600 slices at 0.8x0.8x1.0 mm. Cost should
grow about linearly with the voxels (the per-voxel columns stay flat) and
memory stay bounded (the input int16 array + uint8 labels + fixed overhead).

    OMP_NUM_THREADS=2 python bench/bench_scaling.py --threads 2
    python bench/bench_scaling.py --quick          # 256x256 slices, 30/60/120 slices: smoke test
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

STAGES = ("read", "check", "preprocess", "coarse", "fine", "postprocess", "resample", "statistics", "write")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="bundle folder/name (default: models.resolve_model(None))")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slices", type=int, nargs="+", help="slice counts (default 100 300 600; quick 30 60 120)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workdir", default="/tmp/liverct-bench")
    ap.add_argument("--save", action="store_true", help="append the output to bench/RESULTS.md")
    args = ap.parse_args(argv)

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    inplane, spacing = ((256, 256), C.QUICK_SPACING[:2] + (1.0,)) if args.quick else ((512, 512), C.FULL_SPACING)
    slices = args.slices or ([30, 60, 120] if args.quick else [100, 300, 600])
    model, note = C.resolve_bundle(args.model, work)
    lines = [f"## Scaling: {inplane[1]}x{inplane[0]} x {slices} slices at {spacing} mm"
             f"{' (QUICK)' if args.quick else ''}, device {args.device}", "",
             "command: `" + " ".join(["python bench/bench_scaling.py"] + (argv or sys.argv[1:])) + "`",
             f"machine: {C.machine_line(args.threads)}", f"model: {model}"]
    if note:
        lines.append(note)

    rows, stage_rows = [], []
    for n in slices:
        ct, truth = C.write_phantom(work, (n,) + inplane, spacing)
        out = work / f"out_scaling_{n}"
        m = C.measure([sys.executable, "-m", "LiverCTSegmentationLib.batch.cli", ct, "-o", out, "--model", model,
                       "--device", args.device, "--threads", str(args.threads), "--no-overlay", "--quiet",
                       "--json", "--overwrite"], args.threads)
        if m.returncode != 0:
            sys.exit(f"liverseg failed on {n} slices (exit {m.returncode}):\n{m.stderr[-3000:]}")
        res = C.cli_json(m.stdout)[0]
        tm = res.get("timings", {})
        compute = sum(float(tm.get(s, 0.0)) for s in STAGES)
        mvox = n * inplane[0] * inplane[1] / 1e6
        d_liver, _ = C.dice_pair(out / res["outputs"]["label"], truth)
        rows.append([n, mvox, compute, m.wall_s, m.peak_rss_mb, compute / mvox, m.peak_rss_mb / mvox, d_liver])
        stage_rows.append([n] + [float(tm.get(s, 0.0)) for s in STAGES])
    lines += ["", C.table(rows, ["slices", "Mvoxels", "compute s", "process wall s", "peak RSS MB", "s / Mvoxel",
                                 "MB / Mvoxel", "Dice liver"])]
    lines += ["", "per stage (s):", "", C.table(stage_rows, ["slices"] + list(STAGES))]
    # linearity: marginal cost between the smallest and largest case
    (n0, v0, c0, _, r0, *_), (n1, v1, c1, _, r1, *_) = rows[0], rows[-1]
    lines += ["", f"marginal cost {n0}->{n1} slices: {(c1 - c0) / (v1 - v0):.3f} s / Mvoxel, "
                  f"{(r1 - r0) / (v1 - v0):.1f} MB / Mvoxel (input int16 alone is {2 * 1e6 / 2**20:.1f} MB / Mvoxel); "
                  f"time x{c1 / c0:.2f} for voxels x{v1 / v0:.2f}"]
    C.report("\n".join(lines), args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
