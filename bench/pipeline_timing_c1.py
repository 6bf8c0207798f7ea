"""Time engine.pipeline.segment on a 512x512x300 int16 CT with random-weight small networks.

Random weights rarely find a liver, so to exercise the fine stage the coarse
largest-component step is replaced by a realistic liver-sized box (about
200 x 160 x 170 mm) at coarse resolution: the coarse network still runs over
the whole volume, the fine network over that box at 1.5 mm, postprocess,
paste-back and statistics as usual. Peak RSS is this process's ru_maxrss.

    OMP_NUM_THREADS=2 python bench/pipeline_timing_c1.py --threads 2 [--stem 2] [--fast]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LiverCTSegmentation"))
sys.path.insert(0, str(ROOT / "Testing"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stem", type=int, default=2, help="stem_stride of both networks")
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--coarse-patch", type=int, nargs=3, default=[112, 144, 144])
    ap.add_argument("--fine-patch", type=int, nargs=3, default=[96, 96, 96])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    import torch

    from bundle_fixtures import _description
    from LiverCTSegmentationLib.engine import pipeline
    from LiverCTSegmentationLib.engine.bundle import ModelBundle, save_bundle
    from LiverCTSegmentationLib.engine.networks import build_network
    from LiverCTSegmentationLib.engine.volume import Volume
    from LiverCTSegmentationLib.engine.device import use_bf16
    from LiverCTSegmentationLib.engine.progress import Progress

    torch.set_num_threads(args.threads)
    arch = {"name": "reduced_unet3d", "in_channels": 1, "channels": [8, 16, 32, 64], "norm": "instance",
            "dropout": 0.0, "stem_stride": args.stem}
    inten = {"clip": [-200.0, 300.0], "mean": 50.0, "std": 125.0}
    stages = {
        "coarse": {"architecture": dict(arch, out_channels=2), "spacing": [3.0] * 3,
                   "patch_size": args.coarse_patch, "intensity": inten, "class_to_label": [0, 1]},
        "fine": {"architecture": dict(arch, out_channels=3), "spacing": [1.5] * 3,
                 "patch_size": args.fine_patch, "intensity": inten, "class_to_label": [0, 1, 2], "margin_mm": 20.0},
    }
    torch.manual_seed(0)
    states = {s: build_network(st["architecture"]).state_dict() for s, st in stages.items()}
    folder = Path(tempfile.mkdtemp()) / "bundle"
    mb = ModelBundle.load(save_bundle(folder, _description("timing", stages), states))

    # synthetic body, built slice by slice (no full-size float temporaries):
    # soft-tissue ellipse in air, a liver-HU ellipsoid, in-plane noise
    shape = (300, 512, 512)
    rng = np.random.default_rng(0)
    j, i = np.ogrid[:512, :512]
    body = ((i - 256) / 230.0) ** 2 + ((j - 256) / 170.0) ** 2 <= 1
    q = ((i - 180) / 110.0) ** 2 + ((j - 230) / 90.0) ** 2
    noise = rng.integers(-20, 20, size=(512, 512)).astype(np.int16)
    ct = np.empty(shape, np.int16)
    for k in range(300):
        sl = np.where(body, 40, -1000).astype(np.int16)
        sl[q + ((k - 150) / 80.0) ** 2 <= 1] = 110
        ct[k] = sl + noise
    vol = Volume(ct, (0.8, 0.8, 1.0), (-204.0, -204.0, -150.0))
    import threading

    import psutil

    proc = psutil.Process()
    base_rss = proc.memory_info().rss
    peak = [base_rss]
    stop = threading.Event()
    current = ["start"]
    per_stage: dict = {}

    def sample():
        while not stop.is_set():
            rss = proc.memory_info().rss
            peak[0] = max(peak[0], rss)
            per_stage[current[0]] = max(per_stage.get(current[0], 0), rss)
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()

    orig = pipeline._largest_component

    def liver_box(mask):
        out = np.zeros(mask.shape, bool)
        kk, jj, ii = (np.array(mask.shape) / 2).astype(int)
        out[kk - 28:kk + 28, jj - 27:jj + 27, ii - 33:ii + 33] = True  # ~200x160x170 mm at 3 mm
        orig(mask)  # keep its cost in the timing
        return out

    pipeline._largest_component = liver_box
    opts = pipeline.SegmentOptions(device=args.device, fast=args.fast)
    for r in range(args.repeat):
        t = time.perf_counter()
        res = pipeline.segment(vol, mb, opts, Progress(lambda f, st: current.__setitem__(0, st)))
        wall = time.perf_counter() - t
        print(f"run {r}: {wall:.2f} s  timings=" + ", ".join(f"{k}={v:.2f}" for k, v in res.timings.items()))
    stop.set()
    print("peak RSS above baseline per stage (MB):",
          {k: round((v - base_rss) / 2**20) for k, v in per_stage.items()})
    rss = peak[0] / 2**20
    print(f"stem={args.stem} fast={args.fast} patches={args.coarse_patch}/{args.fine_patch} threads={args.threads} "
          f"bf16_native={use_bf16(torch.device(args.device))} peak RSS {rss:.0f} MB, before segment {base_rss/2**20:.0f} MB (input array {ct.nbytes/2**20:.0f} MB)")
    print("labels:", np.bincount(res.labelmap.array.ravel(), minlength=3)[:3], "same_grid", res.labelmap.same_grid(vol))


if __name__ == "__main__":
    main()
