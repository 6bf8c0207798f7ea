"""Sliding-window inference with Gaussian blending (nnU-Net style).

Memory: the class-score accumulator lives only on the (low-resolution) grid
being processed, e.g. 3 mm whole body or the 1.5 mm liver box: a few tens of
MB. Networks return logits; the softmax is applied here, per window, and the
Gaussian-weighted probabilities are summed. The normalising weight sum is the
same for every class at a voxel, so it is never needed for the arg-max, and
the arg-max itself is a running comparison (``torch.argmax`` over large
tensors is very slow on CPU, see docs/ARCHITECTURE.md / performance notes).

Single window: the networks are fully convolutional, so a region that fits a
voxel budget (``max_window_voxels``, the pipeline uses ``SINGLE_WINDOW_VOXELS``)
is run as ONE window padded to the network's divisor. There are no window
borders to blend, no overlap recomputation (a 0.5-overlap tiling computes
most voxels several times) and no score accumulator; the arg-max is taken on
the logits directly (softmax is monotonic). Larger regions fall back to the
Gaussian-blended tiling, with windows enlarged (beyond the training patch) to
the budget so that only a few windows with a thin overlap are needed.
"""
from __future__ import annotations

import contextlib
import math
from functools import lru_cache
from typing import Callable, Optional, Sequence

import numpy as np

from .device import choose_device, use_bf16  # noqa: F401  (re-exported for callers)
from .progress import Progress

# ~168^3 voxels: a liver box + margin at 1.5 mm (3-5 M voxels) or a whole CT at 3 mm
# (~2 M) fits. Measured for the [8, 16, 32, 64] stem-2 network on 2 cores with bf16:
# 176x144x176 in 0.58 s, +425 MB; the torch module's float32 activations take twice that
# (float32 128^3: 0.64 s, +442 MB), so float32 on a GPU keeps half the budget. Float32 on the CPU
# runs engine/fast_unet (140 MB live for a 160^3 window, test_memory_budget; the torch module, forced
# with LIVERCT_FAST_UNET=0 for benchmarks, would need ~1.5 GB) and keeps the whole budget:
# one fine window instead of two blended ones halves the fine pass (chaos_150: 1.27 -> 0.60 s) and
# gives CPUs without native bf16 the window plan, hence the labels, of bf16 CPUs and GPUs (liver Dice
# of the two plans >= 0.999 on the six real CTs, 0.981 on the synthetic bundled sample; bench/RESULTS.md
# 2026-12-05).
SINGLE_WINDOW_VOXELS = 168 ** 3
ENLARGED_HALO = 16  # voxels of overlap kept between enlarged windows


def default_window_voxels(bf16: bool, device_type: str = "cpu") -> int:
    """Single-window budget (voxels): ``SINGLE_WINDOW_VOXELS``, halved for float32 on a GPU."""
    return SINGLE_WINDOW_VOXELS if bf16 or device_type == "cpu" else SINGLE_WINDOW_VOXELS // 2


def enlarged_window(shape: Sequence[int], patch: Sequence[int], divisor: int, max_voxels: int,
                    halo: int = ENLARGED_HALO) -> tuple:
    """Largest window (multiples of ``divisor``, >= ``patch``, <= ``shape``) within ``max_voxels``.

    The longest axis is split into one more part at a time; each part keeps
    ``halo`` voxels of overlap. Falls back to ``patch`` when nothing bigger fits.
    """
    d = max(1, int(divisor))
    shape = [int(s) for s in shape]
    patch = [int(p) for p in patch]
    n = [1, 1, 1]
    w = list(shape)
    while int(np.prod(w, dtype=np.int64)) > max_voxels:
        axes = [a for a in range(3) if w[a] > patch[a]]
        if not axes:
            break
        a = max(axes, key=lambda ax: w[ax])
        n[a] += 1
        part = -(-shape[a] // n[a]) + halo
        w[a] = max(patch[a], min(shape[a], -(-part // d) * d))
    return tuple(w)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start offsets of windows covering ``[0, size)`` (size >= patch), evenly spread, ends included."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    n = int(math.ceil((size - patch) / step)) + 1
    if n == 1:
        return [0]
    actual = (size - patch) / (n - 1)
    return [int(round(actual * i)) for i in range(n)]


@lru_cache(maxsize=8)
def _gaussian_np(patch: tuple, sigma_scale: float = 1.0 / 8) -> np.ndarray:
    # Separable: the 3D weight is the outer product of three 1D Gaussians, each scaled to max 1, so
    # the whole is built in one pass straight into float32 (a float64 3D array and its temporaries
    # cost ~0.1-0.3 s per process on a 2.4 M-voxel window; most of it first touches of fresh memory).
    axes = []
    for p in patch:
        c = (p - 1) / 2.0
        sigma = max(p * sigma_scale, 1e-6)
        g1 = np.exp(-0.5 * ((np.arange(p, dtype=np.float64) - c) / sigma) ** 2)
        axes.append(g1 / g1.max())
    # no zero weights: edge voxels of a window still count (covered-once voxels stay defined);
    # the smallest positive weight of a product of positive factors is the product of the minima
    floor = np.float32(max(np.prod([a[a > 0].min() if (a > 0).any() else 1.0 for a in axes]), 1e-6))
    g = np.empty(patch, dtype=np.float32)
    np.multiply(axes[0][:, None, None], np.outer(axes[1], axes[2])[None], out=g, casting="same_kind")
    np.maximum(g, floor, out=g)
    return g


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """Gaussian weights (max 1, strictly positive) of a window; sigma = patch * sigma_scale."""
    return _gaussian_np(tuple(int(p) for p in patch_size), sigma_scale).copy()


def compare_argmax(scores, out=None):
    """Arg-max over dim 0 of a [C, ...] torch tensor by running comparisons -> uint8 tensor."""
    import torch

    best = scores[0].clone()
    cls = torch.zeros(scores.shape[1:], dtype=torch.uint8, device=scores.device)
    for c in range(1, scores.shape[0]):
        better = scores[c] > best
        cls[better] = c
        torch.maximum(best, scores[c], out=best)
    return cls


def _autocast(device, bf16: bool):
    import torch

    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _single_window(net, img: np.ndarray, shape: tuple, device, bf16: bool, progress: Optional[Progress],
                   pad_value: Optional[float], channels_last: bool,
                   foreground_out: Optional[list] = None, executor: Optional[Callable] = None,
                   probabilities_out: Optional[list] = None) -> np.ndarray:
    """Class map of ``img`` from one forward pass over it, padded at the far ends to ``shape``."""
    import torch

    if progress is not None:
        progress.check()
    orig = img.shape
    if tuple(shape) != orig:
        pv = float(img.min()) if pad_value is None else float(pad_value)
        img = np.pad(img, [(0, t - s) for s, t in zip(orig, shape)], mode="constant", constant_values=pv)
    x = torch.from_numpy(img)[None, None].to(device)
    if channels_last:
        if executor is None:
            net = net.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode(), _autocast(device, bf16):
        logits = (executor or net)(x)[0]
    del x
    cls = compare_argmax(logits.float())[: orig[0], : orig[1], : orig[2]]
    if foreground_out is not None:
        fg = 1.0 - torch.softmax(logits.float(), dim=0)[0, : orig[0], : orig[1], : orig[2]]
        foreground_out.append(np.ascontiguousarray(fg.cpu().numpy()))
    if probabilities_out is not None:
        p = torch.softmax(logits.float(), dim=0)[:, : orig[0], : orig[1], : orig[2]]
        probabilities_out.append(np.ascontiguousarray(p.to(torch.float16).cpu().numpy()))
    if progress is not None:
        progress.report(1.0)
    return np.ascontiguousarray(cls.cpu().numpy())


def sliding_window_predict(
    net,
    image_kji: np.ndarray,
    patch_size: Sequence[int],
    n_classes: int,
    overlap: float = 0.5,
    batch_size: int = 2,
    device=None,
    bf16: bool = False,
    progress: Optional[Progress] = None,
    spatial_dims: int = 3,
    pad_value: Optional[float] = None,
    channels_last: Optional[bool] = None,
    max_window_voxels: int = 0,
    divisor: int = 1,
    foreground_out: Optional[list] = None,
    executor: Optional[Callable] = None,
    probabilities_out: Optional[list] = None,
) -> np.ndarray:
    """Class map (uint8, same shape as ``image_kji``) of a normalised float32 image.

    ``patch_size`` is (k, j, i); for a 2D network (``spatial_dims=2``) it is
    ``(1, H, W)`` and each window is one slice. Inputs smaller than a patch
    are padded with ``pad_value`` (default: the image minimum) and cropped back.
    With ``max_window_voxels > 0`` (3D networks), an image whose size, padded to
    at least the patch and to multiples of ``divisor`` (the network's required
    divisor), has at most that many voxels is run as one window (see module doc).
    ``foreground_out``: a list to which the per-voxel probability of any non-background
    class (float32, same shape) is appended (the pipeline's plausibility check uses it).
    ``probabilities_out``: a list to which the per-class probabilities (float16, [classes, k, j, i])
    are appended (``--probabilities`` and the uncertainty passes use them).
    ``executor``: called instead of ``net`` on 3D windows (``fast_unet.cpu_executor``: the same
    logits from folded weights, less time and memory).
    """
    import torch

    device = torch.device(device or "cpu")
    patch = tuple(int(p) for p in patch_size)
    img = np.asarray(image_kji, dtype=np.float32)
    if img.ndim != 3:
        raise ValueError(f"expected a 3D [k, j, i] image, got shape {img.shape}")
    orig_shape = img.shape
    if channels_last is None:
        channels_last = device.type == "cpu" and spatial_dims == 3
    if max_window_voxels > 0 and spatial_dims == 3:
        d = max(1, int(divisor))
        whole = tuple(max(p, -(-s // d) * d) for s, p in zip(img.shape, patch))
        if int(np.prod(whole, dtype=np.int64)) <= max_window_voxels:
            return _single_window(net, img, whole, device, bf16, progress, pad_value, channels_last,
                                  foreground_out, executor, probabilities_out)
        big = enlarged_window(whole, patch, d, max_window_voxels)
        if big != patch:  # few large windows, thin overlap, one at a time (memory)
            pv = float(img.min()) if pad_value is None else float(pad_value)
            img = np.pad(img, [(0, t - s) for s, t in zip(img.shape, whole)], mode="constant", constant_values=pv)
            patch, overlap, batch_size = big, 0.0, 1
    if any(s < p for s, p in zip(img.shape, patch)):
        pv = float(img.min()) if pad_value is None else float(pad_value)
        pads = [(0, max(0, p - s)) for s, p in zip(img.shape, patch)]
        img = np.pad(img, pads, mode="constant", constant_values=pv)
    shape = img.shape
    starts = [window_starts(s, p, overlap) for s, p in zip(shape, patch)]
    windows = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]

    weight = torch.from_numpy(gaussian_importance(patch)).to(device)
    acc = torch.zeros((n_classes,) + shape, dtype=torch.float32, device=device)
    src = torch.from_numpy(img)
    amp = _autocast(device, bf16)
    if channels_last and executor is None:
        net = net.to(memory_format=torch.channels_last_3d)
    run = executor if (executor is not None and spatial_dims == 3) else net

    n_batches = int(math.ceil(len(windows) / max(1, batch_size)))
    with torch.inference_mode():
        for bi in range(n_batches):
            if progress is not None:
                progress.check()
            chunk = windows[bi * batch_size:(bi + 1) * batch_size]
            x = torch.stack([src[a:a + patch[0], b:b + patch[1], c:c + patch[2]] for a, b, c in chunk])
            x = x.unsqueeze(1).to(device)  # [B, 1, k, j, i]
            if spatial_dims == 2:
                x = x[:, :, 0]
            elif channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with amp:
                logits = run(x)
            if spatial_dims == 2:
                logits = logits.unsqueeze(2)
            prob = torch.softmax(logits.float(), dim=1)
            del logits  # one window-sized class map at a time (memory)
            prob *= weight
            for (a, b, c), p in zip(chunk, prob):
                acc[:, a:a + patch[0], b:b + patch[1], c:c + patch[2]] += p
            if progress is not None:
                progress.report((bi + 1) / n_batches)
    cls = compare_argmax(acc)
    cls = cls[: orig_shape[0], : orig_shape[1], : orig_shape[2]]
    if foreground_out is not None:  # each window's softmax sums to its weight: class sum = weight sum
        crop = acc[:, : orig_shape[0], : orig_shape[1], : orig_shape[2]]
        foreground_out.append(np.ascontiguousarray((1.0 - crop[0] / crop.sum(0)).cpu().numpy()))
    if probabilities_out is not None:
        crop = acc[:, : orig_shape[0], : orig_shape[1], : orig_shape[2]]
        probabilities_out.append(np.ascontiguousarray((crop / crop.sum(0)).to(torch.float16).cpu().numpy()))
    return np.ascontiguousarray(cls.cpu().numpy())
