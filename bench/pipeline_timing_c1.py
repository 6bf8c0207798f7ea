"""Time engine.pipeline.segment on a 512x512x300 phantom CT with random-weight small networks.

Input: ``synthetic.phantom.make_phantom(seed, shape_kji=(300, 512, 512), spacing=(0.8, 0.8, 1.0),
orientation="LPS")`` (cached as .npy in --workdir, never in the repository).
Random weights rarely find a liver, so the coarse largest-component step is
replaced by the phantom's true liver resampled to the coarse grid: the coarse
network still runs over the whole volume, the fine network over the true
liver box + margin at 1.5 mm, then postprocess, paste-back and statistics as
usual. The random fine network labels its box as a noisy mix of liver and
tumour, which makes statistics far costlier than on a real result, so the
statistics time on the phantom's true labelmap is printed too.

Peak RSS: sampled every 5 ms during ``segment`` (absolute, and above the
RSS just before the call, which already holds torch and the 150 MB input).
``--naive`` also times MONAI ``sliding_window_inference`` of the fine network
over the whole CT resampled to 1.5 mm (overlap 0.5, Gaussian), i.e. the
network part of a naive pipeline, for the speed-up ratio.

    OMP_NUM_THREADS=2 python bench/pipeline_timing_c1.py --threads 2 [--stem 2] [--fast] [--naive]
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
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/liverct-bench")
    ap.add_argument("--max-window", type=int, default=None, help="SegmentOptions.max_window_voxels (0: always tile)")
    ap.add_argument("--naive", action="store_true", help="also time MONAI sliding_window_inference (see doc)")
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

    vol, truth = phantom(args.seed, Path(args.workdir))
    ct = vol.array
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

    from LiverCTSegmentationLib.engine.preprocess import grid_for_spacing, resample_like

    size, sp, origin = grid_for_spacing(vol, stages["coarse"]["spacing"])
    coarse_ref = Volume(np.zeros(size[::-1], np.uint8), sp, origin, vol.direction.copy())
    true_liver = resample_like(truth, coarse_ref).array > 0
    orig = pipeline._largest_component

    def liver_box(mask):
        orig(mask)  # keep its cost in the timing
        return true_liver if mask.shape == true_liver.shape else orig(mask)

    pipeline._largest_component = liver_box
    opts = pipeline.SegmentOptions(device=args.device, fast=args.fast)
    if args.max_window is not None:
        opts.max_window_voxels = args.max_window
    for r in range(args.repeat):
        t = time.perf_counter()
        res = pipeline.segment(vol, mb, opts, Progress(lambda f, st: current.__setitem__(0, st)))
        wall = time.perf_counter() - t
        print(f"run {r}: {wall:.2f} s  timings=" + ", ".join(f"{k}={v:.2f}" for k, v in res.timings.items()))
    stop.set()
    from LiverCTSegmentationLib.engine.statistics import compute_statistics

    t = time.perf_counter()
    compute_statistics(truth)
    print(f"statistics on the phantom's true labelmap: {time.perf_counter() - t:.2f} s")
    print("peak RSS above baseline per stage (MB):",
          {k: round((v - base_rss) / 2**20) for k, v in per_stage.items()})
    rss = peak[0] / 2**20
    print(f"stem={args.stem} fast={args.fast} patches={args.coarse_patch}/{args.fine_patch} threads={args.threads} "
          f"bf16_native={use_bf16(torch.device(args.device))} peak RSS {rss:.0f} MB, before segment {base_rss/2**20:.0f} MB (input array {ct.nbytes/2**20:.0f} MB)")
    print("labels:", np.bincount(res.labelmap.array.ravel(), minlength=3)[:3], "same_grid", res.labelmap.same_grid(vol))
    print("engine:", pipeline.__file__)
    if args.naive:
        naive(vol, mb, args.device)


def phantom(seed: int, workdir: Path):
    """(ct, truth) Volumes of the full-size phantom; generated once, then read from workdir."""
    from LiverCTSegmentationLib.synthetic.phantom import make_phantom
    from LiverCTSegmentationLib.engine.volume import Volume

    workdir.mkdir(parents=True, exist_ok=True)
    f_ct, f_lab, f_geo = (workdir / f"phantom{seed}_{n}" for n in ("ct.npy", "label.npy", "geometry.npy"))
    if not f_geo.exists():
        ct, lab = make_phantom(seed, shape_kji=(300, 512, 512), spacing=(0.8, 0.8, 1.0), orientation="LPS")
        np.save(f_ct, ct.array)
        np.save(f_lab, lab.array)
        np.save(f_geo, np.concatenate([ct.spacing, ct.origin, ct.direction.ravel()]))
        del ct, lab
    g = np.load(f_geo)
    geo = (tuple(g[:3]), tuple(g[3:6]), g[6:].reshape(3, 3))
    return Volume(np.load(f_ct), *geo), Volume(np.load(f_lab), *geo)


def naive(vol, mb, device: str) -> None:
    """Network time of MONAI sliding_window_inference over the whole CT at the fine spacing."""
    import torch
    from monai.inferers import sliding_window_inference

    from LiverCTSegmentationLib.engine.preprocess import normalise, resample_to_spacing

    st = mb.stages["fine"]
    net = mb.network("fine", device)
    t = time.perf_counter()
    rs = resample_to_spacing(vol, st.spacing, "linear", default_value=float(st.intensity["clip"][0]))
    x = torch.from_numpy(normalise(rs.array, st.intensity))[None, None]
    t_pre = time.perf_counter() - t
    t = time.perf_counter()
    with torch.inference_mode():
        probs = sliding_window_inference(x, roi_size=tuple(st.patch_size), sw_batch_size=2,
                                         predictor=lambda p: torch.softmax(net(p), 1), overlap=0.5, mode="gaussian")
    t_net = time.perf_counter() - t
    print(f"naive MONAI: grid {tuple(x.shape[2:])}, resample+normalise {t_pre:.2f} s, "
          f"sliding_window_inference {t_net:.2f} s, probabilities {probs.numel() * 4 / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
