"""Training throughput (patches per second) of every preset in training/configs.

For each preset and stage: the preset's network, patch size, batch size, loss
(with the stage's merged class weights) and optimizer, and the autocast dtype
training uses (train.autocast_dtype: bf16/fp16 on CUDA, fp32 on CPU unless
use_bf16); forward + backward + optimizer step on random patches (data
loading and augmentation excluded: this is the compute ceiling). Warm-up steps
are not timed. Each stage runs in its own process so peak RSS is per stage.

    OMP_NUM_THREADS=2 python bench/bench_training.py --threads 2
    python bench/bench_training.py --device cuda       # on a GPU machine
    python bench/bench_training.py --quick             # 1 timed step, patches capped at 48 voxels per axis
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CONFIGS = C.ROOT / "training" / "configs"


def stage_setup(cfg: dict, stage: str, device) -> dict:
    """What training uses for a stage: merged train settings (train.* then stages.<s>.train.*, so
    training-level class_weights count), its loss, and the autocast dtype train.autocast_dtype picks."""
    from liverct_training.losses import build_loss
    from liverct_training.train import autocast_dtype, stage_settings

    t = stage_settings(cfg, stage)
    return {"train": t, "loss": build_loss(t["loss"], t.get("class_weights"), float(t.get("focal_gamma", 2.0))),
            "class_weights": t.get("class_weights"), "amp": autocast_dtype(t, device)}


def worker(preset: str, stage: str, device: str, threads: int, steps: int, cap: int,
           overrides: list[str] | None = None) -> dict:
    import torch

    from liverct_training.config import load_config
    from liverct_training.train import build_optimizer, train_step
    from LiverCTSegmentationLib.engine.networks import build_network, spatial_dims

    torch.set_num_threads(threads)
    dev = torch.device(device)
    cfg = load_config(CONFIGS / f"{preset}.yaml", overrides or [])
    st = cfg["stages"][stage]
    setup = stage_setup(cfg, stage, dev)
    t, amp = setup["train"], setup["amp"]
    arch = st["architecture"]
    dims = spatial_dims(arch)
    patch = [min(int(p), cap) if cap else int(p) for p in st["patch_size"]][3 - dims:]
    bs = int(t["batch_size"])
    n_cls = int(arch["out_channels"])
    torch.manual_seed(0)
    net = build_network(arch).to(dev).train()
    opt = build_optimizer(net, t)
    # Same autocast (bf16/fp16 on CUDA, fp32 on CPU unless use_bf16) and loss scaling as train.py.
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    x = torch.randn(bs, 1, *patch, device=dev)
    y = torch.randint(0, n_cls, (bs, *patch), device=dev)

    def step() -> float:
        return float(train_step(net, setup["loss"], opt, x, y, amp, scaler).detach())

    step()  # warm-up (allocator, cudnn autotune)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    params = sum(p.numel() for p in net.parameters())
    out = {"patch": patch, "batch": bs, "sec_per_step": dt / steps, "patches_per_s": bs * steps / dt,
           "params_M": params / 1e6, "arch": arch["name"], "channels": arch.get("channels"),
           "amp": str(amp).replace("torch.", "") if amp is not None else "fp32",
           "class_weights": setup["class_weights"], "loss": loss}
    print(json.dumps(out))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps per stage")
    ap.add_argument("--presets", nargs="+", help="preset names (default: all in training/configs)")
    ap.add_argument("--quick", action="store_true", help="1 timed step, patch edges capped at 48")
    ap.add_argument("--save", action="store_true", help="append the output to bench/RESULTS.md")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=c",
                    help="config override for every preset, e.g. --set train.amp=fp16")
    ap.add_argument("--worker", nargs=2, metavar=("PRESET", "STAGE"), help=argparse.SUPPRESS)
    ap.add_argument("--cap", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker, device=args.device, threads=args.threads, steps=args.steps, cap=args.cap,
               overrides=args.overrides)
        return 0

    from liverct_training.config import load_config, trained_stages

    steps, cap = (1, 48) if args.quick else (args.steps, 0)
    presets = args.presets or sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    lines = [f"## Training throughput, device {args.device}{' (QUICK: patches capped at 48)' if args.quick else ''}",
             "", "command: `" + " ".join(["python bench/bench_training.py"] + (argv or sys.argv[1:])) + "`",
             f"machine: {C.machine_line(args.threads)}",
             f"forward + backward + optimizer step on random patches, {steps} timed step(s) after 1 warm-up; "
             "data loading/augmentation excluded"]
    rows = []
    for preset in presets:
        for stage in trained_stages(load_config(CONFIGS / f"{preset}.yaml", args.overrides)):
            m = C.measure([sys.executable, __file__, "--worker", preset, stage, "--device", args.device,
                           "--threads", str(args.threads), "--steps", str(steps), "--cap", str(cap),
                           *[f"--set={o}" for o in args.overrides]], args.threads)
            if m.returncode != 0:
                rows.append([preset, stage, *["-"] * 6, f"FAILED: {m.stderr.strip().splitlines()[-1:]}"])
                continue
            r = json.loads(m.stdout.strip().splitlines()[-1])
            rows.append([preset, stage, f"{r['arch']} {r['channels']}", "x".join(map(str, r["patch"])), r["batch"],
                         r["amp"], r["patches_per_s"], r["sec_per_step"], f"{m.peak_rss_mb:.0f}"])
    lines += ["", C.table(rows, ["preset", "stage", "network", "patch", "batch", "autocast", "patches/s", "s/step",
                                 "peak RSS MB"])]
    C.report("\n".join(lines), args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
