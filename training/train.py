"""The training loop: per stage (coarse, fine) patch training with validation and checkpoints.

Run dir layout (F1's export reads it):
  config.yaml          resolved config
  split.json           cases per split (train/val/test)
  last_<stage>.pt      full training state (resume with --resume; checkpoint.py: weights_only=True)
  best_<stage>.pt      state dict only (torch.load(weights_only=True))
  history_<stage>.json per-epoch metrics; plots/*.png; mlruns/ (MLflow)
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import distributed as D
from .checkpoint import atomic_save, load_checkpoint, restore, save_checkpoint
from .class_monitor import UNLEARNED_BELOW, SoftRecall, unlearned
from .config import ConfigError, load_config, save_config, trained_stages
from .determinism import make_generator, rng_state, seed_everything, worker_init_fn
from .sampling import PatchDataset, StageCase, label_lut
from .widen import differs_only_in_tail_width, tail_width, widen_tail

STAGE_ORDER = ("coarse", "fine")


# ------------------------------------------------------------------ data
def split_cases(cfg: dict, run_dir: Path, write: bool = True) -> dict[str, list]:
    """Cases per split: generated phantoms, or F1's readers + the stored patient-level split."""
    from .split import load_or_create_split, split_params, subset_cases, write_split

    data = cfg["data"]
    split_file = Path(data.get("split_file") or run_dir / "split.json")
    if data["kind"] == "phantom":
        from .phantom_data import generate_phantoms

        folder = Path(data.get("cache_dir") or run_dir / "cache") / "phantoms"
        splits = generate_phantoms(folder, data.get("phantom", {}), data.get("prepare_jobs", 1))
        if write:
            # Same format as F1's split.py so `evaluate --split` works on the held-out phantoms.
            all_cases = sorted((c for v in splits.values() for c in v), key=lambda c: c.case_id)
            write_split({"format_version": 1, "seed": int(data["phantom"].get("seed", 0)), "level": "patient",
                         "source": "phantom", "cases": {c.case_id: c.to_dict() for c in all_cases},
                         **{k: [c.case_id for c in v] for k, v in splits.items()}}, split_file)
        return splits
    from .datasets import read_dataset

    cases = read_dataset(data)
    seed, fractions = split_params(cfg)
    named = data.get("split") or {}
    explicit = ((named.get("val") or []), (named.get("test") or [])) if ("test" in named or "val" in named) else None
    split = load_or_create_split(split_file, cases, seed=seed, fractions=fractions, explicit=explicit)
    out = {s: subset_cases(split, s, cases) for s in ("train", "val", "test")}
    if data.get("synthetic"):  # label-driven synthetic CTs join training only; val/test stay real
        from .anatomy_data import synthetic_cases

        out["train"] = out["train"] + synthetic_cases(data["synthetic"], data.get("cache_dir") or run_dir / "cache",
                                                      int(cfg["train"]["seed"]), data.get("prepare_jobs", 1))
    return out


def _class_to_label(st: dict) -> list:
    """The stage's output class -> label value list (identity when the config names none)."""
    return list(st.get("class_to_label", list(range(int(st["architecture"]["out_channels"])))))


def _case_weights(cases: list, data: dict) -> list | None:
    """Per-case sampling weights when synthetic cases share the training set (data.synthetic.fraction)."""
    spec = data.get("synthetic") or {}
    if not spec:
        return None
    from .anatomy_data import case_weights

    return case_weights(cases, float(spec.get("fraction", 0.5)))


def _tumor_class(class_to_label: list, task: str) -> int | None:
    """Network class of the tumour label (liver tasks only: a lung bundle's only class is the tumour)."""
    return class_to_label.index(2) if 2 in class_to_label and task != "lung_tumor" else None


def stage_case(case, stage_name: str, st: dict, cfg: dict) -> StageCase:
    """One case on a stage's grid (F1's cache: resampled, normalised) as class indices.

    A fine stage's cache entry is already cut to the liver box plus ``margin_mm``
    (``cache.stage_cache_spec``): training sees what inference sees.
    """
    from .cache import load_cached, stage_cache_spec

    data = cfg["data"]
    cached = load_cached(case, stage_cache_spec(stage_name, st), data["cache_dir"], data["task"],
                         data.get("label_mapping"), hash_files=bool(data.get("cache_hash_files", False)))
    spacing = tuple(float(s) for s in st["spacing"])
    c2l = _class_to_label(st)
    lut = label_lut(c2l, any_nonzero_is_foreground=(stage_name == "coarse"))
    raw = np.asarray(cached.label)
    image, target = np.asarray(cached.image), lut[raw]
    keep_raw = str((stage_settings(cfg, stage_name).get("augmentation") or {}).get("backend", "monai")).lower() == "torch"
    return StageCase.build(case.case_id, image, target, spacing, _tumor_class(c2l, data["task"]),
                           seed=int(cfg["train"]["seed"]),
                           labels=np.ascontiguousarray(raw, dtype=np.uint8) if keep_raw else None)


def prebuild_cache(cases: list, stage_name: str, st: dict, cfg: dict) -> None:
    """Build missing cache entries in a process pool (``data.prepare_jobs`` > 1); entries are atomic."""
    from .cache import build_entry, stage_cache_spec
    from .parallel import resolve_jobs, run_jobs

    data = cfg["data"]
    jobs = data.get("prepare_jobs", 1)
    if resolve_jobs(jobs) > 1 and len(cases) > 1:
        spec = stage_cache_spec(stage_name, st)
        run_jobs(build_entry, [(c, spec, data["cache_dir"], data["task"], data.get("label_mapping"),
                                bool(data.get("cache_hash_files", False))) for c in cases], jobs)


def load_stage_cases(cases: list, stage_name: str, st: dict, cfg: dict, desc: str) -> list[StageCase]:
    from tqdm import tqdm

    info = D.env_info()
    prebuild_cache(cases, stage_name, st, cfg)
    # `with`: an error while caching closes (clears) the bar, so the CLI's one-line message starts a line.
    with tqdm(cases, desc=desc, disable=not info.is_main, leave=False) as bar:
        return [stage_case(c, stage_name, st, cfg) for c in bar]


# ------------------------------------------------------------ optimisation
def build_optimizer(model, t: dict):
    import torch

    cls = torch.optim.AdamW if t.get("optimizer", "adamw").lower() == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=float(t["lr"]), weight_decay=float(t.get("weight_decay", 0.0)))


def build_scheduler(opt, t: dict, total_iters: int):
    """Per-iteration LambdaLR (cosine/poly/constant with linear warmup) or per-epoch ReduceLROnPlateau."""
    import torch

    if t["schedule"] == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5,
                                                          patience=max(1, int(t.get("early_stopping_patience", 10)) // 3))
    warm = int(t.get("warmup_iterations", 0))
    power = float(t.get("poly_power", 0.9))
    kind = t["schedule"]

    def factor(it: int) -> float:
        if warm and it < warm:
            return (it + 1) / warm
        frac = min(1.0, (it - warm) / max(1, total_iters - warm))
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * frac))
        if kind == "poly":
            return (1 - frac) ** power
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def autocast_dtype(t: dict, device) -> Any:
    """bf16/fp16 autocast on GPU; on CPU only with use_bf16 (emulated bf16 is slower than fp32)."""
    import torch

    amp = str(t.get("amp", "auto")).lower()
    if amp in ("off", "false", "none", "no"):
        return None
    if device.type == "cpu":
        return torch.bfloat16 if t.get("use_bf16") else None
    if device.type == "cuda":
        if amp == "fp16":
            return torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def stage_settings(cfg: dict, stage_name: str) -> dict:
    """The train section as a stage sees it: ``train`` with ``stages.<stage>.train`` merged over it."""
    from .config import deep_merge

    return deep_merge(cfg["train"], cfg["stages"][stage_name].get("train") or {})


def stage_class_names(st: dict, task: str) -> list[str]:
    """Names of a stage's output classes for messages: background, liver, tumor (or class N)."""
    c2l = _class_to_label(st)
    tumor = _tumor_class(c2l, task)
    names = ["background"] + [f"class {c}" for c in range(1, len(c2l))]
    if len(c2l) > 1 and str(task).startswith("liver"):
        names[1] = "liver"
    if tumor is not None and tumor < len(names):
        names[tumor] = "tumor"
    return names


def torch_augmenter(cfg: dict, stage_name: str, patch: Sequence[int]) -> Any:
    """The stage's on-device batch augmentation (``augmentation.backend: torch``): crops, warps,
    intensities and synthetic lesions exactly as training draws them (also used by
    scripts/tumour_channel_check.py)."""
    from .augment_torch import build_torch_augmentation

    st, t = cfg["stages"][stage_name], stage_settings(cfg, stage_name)
    c2l = _class_to_label(st)
    lo, hi = (float(v) for v in st["intensity"]["clip"])
    mean, std = float(st["intensity"].get("mean", 0.0)), float(st["intensity"].get("std", 1.0))
    return build_torch_augmentation(
        t.get("augmentation", {}) or {}, tuple(patch), label_lut(c2l, any_nonzero_is_foreground=(stage_name == "coarse")),
        lesions=t.get("lesions"), spacing=st["spacing"], liver_class=1,
        tumor_class=_tumor_class(c2l, cfg["data"]["task"]), clip=((lo - mean) / std, (hi - mean) / std))


def train_step(model, loss_fn, opt, x, y, amp_dtype, scaler, recall=None):
    """One optimiser step under the run's autocast (shared with bench/bench_training.py); returns the loss.
    ``recall`` (a ``class_monitor.SoftRecall``) is updated from the step's own logits."""
    import torch

    opt.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = model(x)
        loss = loss_fn(logits, y)
    if recall is not None:
        recall.update(logits, y)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    return loss


# -------------------------------------------------------------- validation
def predict_stage(model, image: np.ndarray, st: dict, device) -> np.ndarray:
    """Class map of a stage array with the engine's sliding-window inference (what the module runs)."""
    from LiverCTSegmentationLib.engine.inference import sliding_window_predict
    from LiverCTSegmentationLib.engine.networks import spatial_dims

    arch = st["architecture"]
    # channels_last=False: converting the live training model's memory format would disturb DDP/optimiser.
    return sliding_window_predict(model, np.asarray(image, np.float32), tuple(int(p) for p in st["patch_size"]),
                                  int(arch["out_channels"]), overlap=0.5, batch_size=2, device=device,
                                  spatial_dims=spatial_dims(arch), pad_value=float(image.min()),
                                  channels_last=False)


def dice(pred: np.ndarray, truth: np.ndarray, c: int) -> float:
    p, t = pred == c, truth == c
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(p, t).sum() / denom)


def validate(model, val: list[StageCase], st: dict, device, info: D.DistInfo) -> tuple[dict[str, float], tuple | None]:
    """Mean per-class Dice over this rank's val shard, averaged over ranks; plus one example."""
    n_classes = int(st["architecture"]["out_channels"])
    sums = np.zeros(n_classes)
    example = None
    mine = D.shard_indices(len(val), info)
    model.eval()
    for i in mine:
        pred = predict_stage(model, val[i].image, st, device)
        for c in range(1, n_classes):
            sums[c] += dice(pred, val[i].target, c)
        if example is None:
            example = (val[i].image, pred, val[i].target, val[i].case_id)
    model.train()
    n = D.all_reduce_mean(len(mine), info) * info.world_size
    metrics = {f"val_dice_{c}": D.all_reduce_mean(sums[c], info) * info.world_size / max(n, 1)
               for c in range(1, n_classes)}
    metrics["val_dice"] = float(np.mean(list(metrics.values()))) if metrics else 0.0
    return metrics, example


def is_improvement(score: float | None, best: float, has_val: bool) -> bool:
    """Whether this epoch's weights become best_<stage>.pt.

    Only a validation round can select weights: an epoch without one (val_every > 1) must not
    overwrite the selected model. A run with no validation cases at all (leave-one-out final
    models) has nothing to select on, so best is simply the latest epoch.
    """
    if score is None:
        return not has_val
    return score > best


def _batch_generator(device, seed: int, rank: int, epoch: int, it: int):
    """A generator for one batch's on-device augmentation: same draws for the same (seed, rank, epoch, it)."""
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.default_rng([int(seed), int(rank), int(epoch), int(it), 7]).integers(2**62)))
    return g


# --------------------------------------------------------------- checkpoints
def weights_digest(model) -> str:
    """SHA256 over the state dict (key order): compares weights across ranks and runs."""
    import hashlib

    h = hashlib.sha256()
    for k, v in D.unwrap(model).state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _cpu_state(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in D.unwrap(model).state_dict().items()}


def load_init_weights(model, folder: str, stage_name: str, arch: dict) -> str:
    """Start a stage from an exported bundle's weights (``train.init_weights``: a bundle folder).

    Why: fine-tuning a trained stage costs a fraction of training from scratch, which is what
    makes CPU training feasible. The bundle's SHA256 is verified and its architecture must equal
    the stage's, so a warm start can never silently load mismatched or unverified weights; the one
    allowed difference is a wider ``refine_channels`` tail (``widen.py``: same logits at the start).
    Returns the weights' SHA256 (recorded in the history for the model card).
    """
    from LiverCTSegmentationLib.engine.bundle import ModelBundle, load_state_dict

    bundle = ModelBundle.load(Path(folder).expanduser())
    if stage_name not in bundle.stages:
        raise ConfigError(f"train.init_weights: model '{bundle.name}' has no stage '{stage_name}' "
                          f"(has {', '.join(bundle.stage_names)})")
    src = bundle.stages[stage_name]
    if differs_only_in_tail_width(dict(src.architecture), dict(arch)):
        # A wider full-resolution tail: the trained weights, widened without changing the output.
        D.unwrap(model).load_state_dict(widen_tail(load_state_dict(src), D.unwrap(model)), strict=True)
        print(f"[{stage_name}] warm start from {bundle.name}: tail widened {tail_width(src.architecture)} -> "
              f"{tail_width(arch)} channels (same logits until trained)", flush=True)
        return src.sha256
    if dict(src.architecture) != dict(arch):
        raise ConfigError(f"train.init_weights: stage '{stage_name}' of '{bundle.name}' is {src.architecture}, "
                          f"but this config's stage is {arch}; the architectures must be equal to warm-start")
    D.unwrap(model).load_state_dict(load_state_dict(src), strict=True)
    return src.sha256


# -------------------------------------------------------------------- stage
def train_stage(stage_name: str, cfg: dict, splits: dict, run_dir: Path, device, info: D.DistInfo,
                tracker, resume: bool) -> dict:
    import torch
    from tqdm import tqdm

    from LiverCTSegmentationLib.engine.device import usable_cores
    from LiverCTSegmentationLib.engine.networks import build_network, required_divisor, spatial_dims

    from .augment import build_augmentation
    from .losses import build_loss
    from .plots import plot_curves, plot_overlay

    st = cfg["stages"][stage_name]
    t = stage_settings(cfg, stage_name)
    arch = st["architecture"]
    div = required_divisor(arch)
    # train.patch_size: a smaller training patch (e.g. on a CPU); the stage's patch_size stays the
    # inference window written into the bundle.
    train_patch = list(t.get("patch_size") or st["patch_size"])
    if any(int(p) % div for p in train_patch[3 - spatial_dims(arch):]):
        raise ConfigError(f"stages.{stage_name} training patch {train_patch} must be multiples of {div}")
    last_path, best_path = run_dir / f"last_{stage_name}.pt", run_dir / f"best_{stage_name}.pt"
    ckpt = None
    if resume and last_path.exists():
        ckpt = load_checkpoint(last_path, stage_name)
        if ckpt.get("done") and (ckpt.get("stopped_early") or ckpt["epoch"] + 1 >= int(t["epochs"])):
            if info.is_main:
                print(f"[{stage_name}] already finished (resume): skipping")
            return ckpt["summary"]

    # Same seed on every rank -> identical initial weights; ranks differ only in the patches they draw.
    seed = int(t["seed"]) + STAGE_ORDER.index(stage_name) if stage_name in STAGE_ORDER else int(t["seed"])
    seed_everything(seed, bool(t.get("deterministic", True)))
    train_ids = D.shard_indices(len(splits["train"]), info)
    train_cases = load_stage_cases([splits["train"][i] for i in train_ids], stage_name, st, cfg, f"{stage_name} train")
    val_src = splits.get("val", [])[: t.get("max_val_cases") or None]
    val_cases = load_stage_cases(val_src, stage_name, st, cfg, f"{stage_name} val")

    model = build_network(arch)
    init_sha = load_init_weights(model, t["init_weights"], stage_name, arch) if t.get("init_weights") else None
    model = D.wrap_model(model.to(device), info, device)
    opt = build_optimizer(model, t)
    epochs, iters, bs = int(t["epochs"]), int(t["iterations_per_epoch"]), int(t["batch_size"])
    sched = build_scheduler(opt, t, epochs * iters)
    loss_fn = build_loss(t["loss"], t.get("class_weights"), float(t.get("focal_gamma", 2.0)))
    amp_dtype = autocast_dtype(t, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    dims = spatial_dims(arch)
    # 2D networks: the bundle's patch is (1, H, W); training draws (H, W) slices.
    patch = tuple(int(p) for p in train_patch)[3 - dims:]
    aug_cfg = t.get("augmentation", {}) or {}
    weights = _case_weights([splits["train"][i] for i in train_ids], cfg["data"])
    on_device = None
    if str(aug_cfg.get("backend", "monai")).lower() == "torch":
        # Crop only in the loader; augment whole batches on the training device.
        on_device = torch_augmenter(cfg, stage_name, patch)
        ds = PatchDataset(train_cases, on_device.crop, iters * bs, seed, float(t["fg_oversample"]),
                          float(t["tumor_oversample"]), rank=info.rank, raw_labels=True, weights=weights)
    else:
        ds = PatchDataset(train_cases, patch, iters * bs, seed, float(t["fg_oversample"]),
                          float(t["tumor_oversample"]), rank=info.rank,
                          transform=build_augmentation(aug_cfg, dims), weights=weights)
    # Patches are seeded per index, so the worker count changes speed, never the batches: cap it at
    # the cores this process may use (a GPU preset's 4-6 workers on a 2-core CI machine only thrash).
    nw = min(int(t.get("num_workers", 0)), usable_cores())
    loader_kw = dict(batch_size=bs, shuffle=False, num_workers=nw, worker_init_fn=worker_init_fn,
                     generator=make_generator(seed), drop_last=True, pin_memory=device.type == "cuda")

    recall = SoftRecall(int(arch["out_channels"]))
    start_epoch, history, best, bad = 0, [], -1.0, 0
    if ckpt is not None:
        restore(ckpt, last_path, D.unwrap(model), opt, sched, scaler)
        start_epoch, history, best, bad = ckpt["epoch"] + 1, ckpt["history"], ckpt["best"], ckpt["bad_epochs"]

    patience = int(t.get("early_stopping_patience", 0) or 0)
    step, stopped_early = start_epoch * iters, False
    for epoch in range(start_epoch, epochs):
        ds.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(ds, **loader_kw)
        t0, losses = time.perf_counter(), []
        recall.reset()
        bar = tqdm(loader, desc=f"{stage_name} {epoch + 1}/{epochs}", disable=not info.is_main, leave=False)
        for it, (x, y) in enumerate(bar):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if on_device is not None:
                with torch.no_grad():
                    x, y = on_device(x, y, _batch_generator(device, seed, info.rank, epoch, it))
            loss = train_step(model, loss_fn, opt, x, y, amp_dtype, scaler, recall)
            if t["schedule"] != "plateau":
                sched.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        dt = time.perf_counter() - t0
        D.sync_buffers(model, info)
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": D.all_reduce_mean(float(np.mean(losses)), info),
                               "lr": opt.param_groups[0]["lr"], "sec_per_iter": dt / max(1, len(losses))}
        # mean probability of each class on its own voxels this epoch (a collapsing class shows here)
        row.update({f"soft_recall_{c}": v for c, v in recall.values().items()})
        example = None
        if val_cases and ((epoch + 1) % int(t.get("val_every", 1)) == 0 or epoch + 1 == epochs):
            vm, example = validate(D.unwrap(model), val_cases, st, device, info)
            row.update(vm)
            if t["schedule"] == "plateau":
                sched.step(vm["val_dice"])
        score = row.get("val_dice")
        improved = is_improvement(score, best, has_val=bool(val_cases))
        if score is not None:
            best, bad = (score, 0) if improved else (best, bad + 1)
        history.append(row)
        stop = D.broadcast_flag(patience > 0 and bad >= patience, info)
        if info.is_main:
            if improved:
                atomic_save(_cpu_state(model), best_path)
                if example is not None and cfg["output"].get("plots", True):
                    img, pred, truth, cid = example
                    plot_overlay(img, pred, truth, run_dir / "plots" / f"overlay_{stage_name}.png",
                                 title=f"{stage_name} {cid} epoch {epoch + 1} Dice {score:.3f}")
            state = {"model": _cpu_state(model), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "scaler": scaler.state_dict() if scaler else None, "rng": rng_state(), "epoch": epoch,
                     "history": history, "best": best, "bad_epochs": bad, "stage": stage_name, "done": False}
            save_checkpoint(state, last_path)
            tracker.log_metrics({f"{stage_name}.{k}": v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
            (run_dir / f"history_{stage_name}.json").write_text(json.dumps(history, indent=1))
            msg = " ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float))
            print(f"[{stage_name}] epoch {epoch + 1}/{epochs} {msg}", flush=True)
        if stop:
            stopped_early = True
            if info.is_main:
                print(f"[{stage_name}] early stop: no val Dice gain for {patience} validation rounds", flush=True)
            break

    summary = {"stage": stage_name, "epochs_run": len(history), "best_val_dice": best if best >= 0 else None,
               "final_train_loss": history[-1]["train_loss"] if history else None,
               "sec_per_iter": float(np.mean([h["sec_per_iter"] for h in history])) if history else None,
               "weights_sha256": weights_digest(model), "rank": info.rank, "world_size": info.world_size,
               "init_weights_sha256": init_sha}
    if history:
        last = {int(k.rsplit("_", 1)[1]): v for k, v in history[-1].items() if k.startswith("soft_recall_")}
        summary["soft_recall"] = {str(c): round(v, 4) for c, v in last.items()}
        summary["unlearned_classes"] = unlearned(last, stage_class_names(st, cfg["data"]["task"]))
        if summary["unlearned_classes"] and info.is_main:
            print(f"[{stage_name}] WARNING: not learned: {', '.join(summary['unlearned_classes'])} (mean probability "
                  f"on its own voxels < {UNLEARNED_BELOW} in the last epoch: soft_recall in history_{stage_name}.json). "
                  "Train longer, raise its class weight or oversampling, and check its labels.", flush=True)
    if info.is_main:
        state = load_checkpoint(last_path, stage_name)
        state.update(done=True, stopped_early=stopped_early, summary=summary)
        save_checkpoint(state, last_path)
        if cfg["output"].get("plots", True) and history:
            p = plot_curves(history, run_dir / "plots" / f"curves_{stage_name}.png", title=stage_name)
            tracker.log_artifact(p, "plots")
            ov = run_dir / "plots" / f"overlay_{stage_name}.png"
            tracker.log_artifact(ov, "plots")
    D.barrier(info)
    return summary


# --------------------------------------------------------------------- run
def train(cfg: dict, resume: bool = False) -> dict:
    """Train every configured stage; returns {stage: summary}. Works under torchrun."""
    import torch

    from LiverCTSegmentationLib.engine.device import choose_device, setup_threads, usable_cores

    from .tracking import Tracker

    info = D.env_info()
    t = cfg["train"]
    device = choose_device(t.get("device", "auto"))
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    info = D.init_distributed(device.type)
    if device.type == "cpu":
        setup_threads(t.get("threads") or max(1, usable_cores() // info.world_size))
    run_dir = Path(cfg["output"]["run_dir"]).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg["data"].get("cache_dir"):
        cfg["data"]["cache_dir"] = str(run_dir / "cache")
    if info.is_main:
        splits = split_cases(cfg, run_dir)
    D.barrier(info)  # rank 0 generates / splits first; others then reuse the files
    if not info.is_main:
        splits = split_cases(cfg, run_dir, write=False)
    out = cfg["output"]
    tracker = Tracker(run_dir, enabled=bool(out.get("mlflow", True)) and info.is_main,
                      tracking_uri=out.get("mlflow_tracking_uri"), experiment=out.get("experiment", "liverct"),
                      run_name=cfg.get("name"))
    try:
        if info.is_main:
            cfg_path = save_config(cfg, run_dir / "config.yaml")
            tracker.log_config(cfg)
            tracker.log_artifact(cfg_path)
        chosen = trained_stages(cfg)
        stages = [s for s in STAGE_ORDER if s in chosen] + [s for s in chosen if s not in STAGE_ORDER]
        results = {s: train_stage(s, cfg, splits, run_dir, device, info, tracker, resume) for s in stages}
        if info.is_main:
            (run_dir / "train_summary.json").write_text(json.dumps(results, indent=1))
            tracker.log_artifact(run_dir / "train_summary.json")
        tracker.close()
        return results
    except BaseException:
        tracker.close("FAILED")
        raise
    finally:
        D.cleanup(info)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liverseg-train train", description="Train a (two-stage) liver CT model.")
    p.add_argument("config", help="preset name (phantom, lits_msd_liver_tumor, msd_lung_tumor, "
                                  "ircadb_chaos_liver) or a YAML file")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.epochs=2 data.root=/data")
    p.add_argument("--run-dir", help="output folder (output.run_dir)")
    p.add_argument("--resume", action="store_true", help="continue from last_<stage>.pt in the run dir")
    p.add_argument("--stages", help="comma-separated subset of stages to train, e.g. coarse")
    return p


def main_train(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"output.run_dir={args.run_dir}")
    if args.stages:
        overrides.append(f"train.stages=[{args.stages}]")
    cfg = load_config(args.config, overrides)
    results = train(cfg, resume=args.resume)
    if D.env_info().is_main:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_train())
