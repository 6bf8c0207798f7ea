"""End-to-end ``liverseg`` on a full-size phantom CT vs a naive MONAI baseline, same run.

Both variants run in their own process (peak RSS of exactly that process):

- liverseg: the real command line (``--json`` gives per-stage times), no overlay PNG;
- naive: whole volume resampled to the fine stage's spacing, MONAI
  ``sliding_window_inference`` (same network, same patch, overlap, Gaussian
  blending), full-resolution probabilities interpolated back to the native grid,
  arg-max there. This is what a straightforward implementation does.

Dice of both against the phantom's exact truth. Phantom CT and truth live in
--workdir (default /tmp/liverct-bench), never in the repository.

    OMP_NUM_THREADS=2 python bench/bench_end_to_end.py --threads 2            # 512x512x300, 0.8x0.8x1 mm
    python bench/bench_end_to_end.py --quick                                  # 256x256x100, smoke test
    python bench/bench_end_to_end.py --model path/to/bundle --device cuda --save
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TARGET_S, TARGET_GPU_S, TARGET_RSS_MB, TARGET_SPEEDUP = 5.0, 1.0, 1024.0, 10.0
STAGES = ("read", "check", "preprocess", "coarse", "fine", "postprocess", "resample", "statistics", "write")


# ----------------------------------------------------------------- naive worker
def naive_worker(ct: str, model: str, out: str, device: str, threads: int, overlap: float) -> None:
    """Runs in its own process; prints a JSON line with its stage timings."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from monai.inferers import sliding_window_inference

    from LiverCTSegmentationLib.engine import io, preprocess
    from LiverCTSegmentationLib.engine.bundle import ModelBundle
    from LiverCTSegmentationLib.engine.networks import spatial_dims

    torch.set_num_threads(threads)
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    tm: dict[str, float] = {}
    t = time.perf_counter()
    vol = io.read_volume(ct)
    tm["read"] = time.perf_counter() - t

    mb = ModelBundle.load(Path(model))
    name = "fine" if "fine" in mb.stages else "coarse"
    st = mb.stages[name]
    net = mb.network(name, dev)
    t = time.perf_counter()
    rs = preprocess.resample_to_spacing(vol, st.spacing, "linear", default_value=float(st.intensity["clip"][0]))
    x = torch.from_numpy(preprocess.normalise(rs.array, st.intensity))[None, None].to(dev)
    tm["preprocess"] = time.perf_counter() - t

    def predictor(patch: torch.Tensor) -> torch.Tensor:
        if spatial_dims(st.architecture) == 2:  # (B,1,1,H,W) -> 2D net -> back
            return torch.softmax(net(patch[:, :, 0]), 1)[:, :, None]
        return torch.softmax(net(patch), 1)

    t = time.perf_counter()
    with torch.inference_mode():
        probs = sliding_window_inference(x, roi_size=tuple(st.patch_size), sw_batch_size=2, predictor=predictor,
                                         overlap=overlap, mode="gaussian")
        if dev.type == "cuda":
            torch.cuda.synchronize()
        tm["inference"] = time.perf_counter() - t
        t = time.perf_counter()
        # probabilities back to the native grid (same field of view: edges aligned), arg-max there
        native = F.interpolate(probs, size=tuple(vol.shape_kji), mode="trilinear", align_corners=False)
        cls = torch.argmax(native, dim=1)[0].cpu().numpy()
    lut = np.asarray(st.class_to_label, dtype=np.uint8)
    label = vol.with_array(lut[cls])
    tm["resample_argmax"] = time.perf_counter() - t
    t = time.perf_counter()
    io.write_volume(label, out, overwrite=True)
    tm["write"] = time.perf_counter() - t
    print(json.dumps({"timings": tm, "stage": name, "grid": list(rs.shape_kji)}))


# ----------------------------------------------------------------------- driver
def run_liverseg(ct: Path, model: Path, out: Path, args) -> tuple[C.Measured, dict]:
    cmd = [sys.executable, "-m", "LiverCTSegmentationLib.cli", ct, "-o", out, "--model", model,
           "--device", args.device, "--threads", str(args.threads), "--no-overlay", "--quiet", "--json",
           "--overwrite"]
    if args.fast:
        cmd.append("--fast")
    m = C.measure(cmd, args.threads)
    if m.returncode != 0:
        sys.exit(f"liverseg failed (exit {m.returncode}):\n{m.stderr[-3000:]}")
    return m, C.cli_json(m.stdout)[0]


def run_naive(ct: Path, model: Path, out: Path, args) -> tuple[C.Measured, dict]:
    cmd = [sys.executable, __file__, "--naive-worker", ct, model, out, "--device", args.device,
           "--threads", str(args.threads), "--overlap", str(0.25 if args.fast else 0.5)]
    m = C.measure(cmd, args.threads)
    if m.returncode != 0:
        sys.exit(f"naive baseline failed (exit {m.returncode}):\n{m.stderr[-3000:]}")
    return m, json.loads(m.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="bundle folder/name (default: models.resolve_model(None))")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help=f"{C.QUICK_SHAPE[::-1]} voxels instead of 512x512x300")
    ap.add_argument("--fast", action="store_true", help="liverseg --fast (overlap 0.25) for both variants")
    ap.add_argument("--no-baseline", action="store_true", help="skip the naive baseline")
    ap.add_argument("--workdir", default="/tmp/liverct-bench")
    ap.add_argument("--save", action="store_true", help="append the output to bench/RESULTS.md")
    ap.add_argument("--naive-worker", nargs=3, metavar=("CT", "MODEL", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--overlap", type=float, default=0.5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.naive_worker:
        naive_worker(*args.naive_worker, device=args.device, threads=args.threads, overlap=args.overlap)
        return 0

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    shape, spacing = (C.QUICK_SHAPE, C.QUICK_SPACING) if args.quick else (C.FULL_SHAPE, C.FULL_SPACING)
    ct, truth = C.write_phantom(work, shape, spacing)
    model, note = C.resolve_bundle(args.model, work)
    lines = [f"## End to end: {'x'.join(map(str, shape[::-1]))} voxels at {spacing} mm"
             f"{' (QUICK)' if args.quick else ''}, device {args.device}",
             "", "command: `" + " ".join(["python bench/bench_end_to_end.py"] + (argv or sys.argv[1:])) + "`",
             f"machine: {C.machine_line(args.threads)}", f"model: {model}"]
    if note:
        lines.append(note)

    startup = C.measure([sys.executable, "-c", "import torch, LiverCTSegmentationLib.cli"], args.threads)
    m_ours, res = run_liverseg(ct, model, work / "out_liverseg", args)
    d_ours = C.dice_pair(work / "out_liverseg" / res["outputs"]["label"], truth)
    tm = res.get("timings", {})
    stage_rows = [[s, float(tm.get(s, 0.0))] for s in STAGES if s in tm]
    compute = sum(v for _, v in stage_rows)
    stage_rows.append(["sum of stages", compute])
    stage_rows.append(["process wall (incl. python/torch start)", m_ours.wall_s])
    stage_rows.append(["python + torch + package import alone", startup.wall_s])
    lines += ["", "liverseg stages (s):", "", C.table(stage_rows, ["stage", "seconds"])]

    rows = [["liverseg", m_ours.wall_s, compute, m_ours.peak_rss_mb, d_ours[0], d_ours[1]]]
    if not args.no_baseline:
        m_naive, nres = run_naive(ct, model, work / "naive_label.nii.gz", args)
        d_naive = C.dice_pair(work / "naive_label.nii.gz", truth)
        ncompute = sum(nres["timings"].values())
        rows.append([f"naive MONAI ({nres['stage']} net, grid {nres['grid']})", m_naive.wall_s, ncompute,
                     m_naive.peak_rss_mb, d_naive[0], d_naive[1]])
        lines += ["", "naive stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in nres["timings"].items())]
    lines += ["", C.table(rows, ["variant", "process wall s", "compute s", "peak RSS MB", "Dice liver",
                                 "Dice tumour"])]
    if not args.no_baseline:
        speed = ncompute / max(compute, 1e-9)
        mem = m_naive.peak_rss_mb / max(m_ours.peak_rss_mb, 1e-9)
        lines += ["", f"naive / liverseg: compute time x{speed:.1f}, process wall x{m_naive.wall_s / m_ours.wall_s:.1f},"
                      f" peak RSS x{mem:.1f}; Dice liver {d_ours[0]:.3f} vs {d_naive[0]:.3f}"]
    target_s = TARGET_GPU_S if args.device == "cuda" else TARGET_S
    verdict = [f"compute {compute:.2f} s <= {target_s:g} s: {'PASS' if compute <= target_s else 'FAIL'}",
               f"peak RSS {m_ours.peak_rss_mb:.0f} MB <= {TARGET_RSS_MB:.0f} MB: "
               f"{'PASS' if m_ours.peak_rss_mb <= TARGET_RSS_MB else 'FAIL'}"]
    if not args.no_baseline:
        verdict.append(f">= {TARGET_SPEEDUP:g}x faster than naive at >= Dice: "
                       f"{'PASS' if speed >= TARGET_SPEEDUP and d_ours[0] >= d_naive[0] - 1e-3 else 'FAIL'}")
    lines += ["", "targets" + (" (quick size: indicative only)" if args.quick else "") + ": " + "; ".join(verdict)]
    text = "\n".join(lines)
    print(text)
    if args.save:
        with open(Path(__file__).parent / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(f"\n\n<!-- {time.strftime('%Y-%m-%d %H:%M')} -->\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
