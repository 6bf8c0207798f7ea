"""Segmentation losses on logits ``[B, C, *spatial]`` and integer targets ``[B, *spatial]``.

Written with elementwise ops + one-hot (no gather/scatter, no weighted nll) so
they have deterministic CPU and CUDA kernels.
BCE is for binary tasks with two output channels: sigmoid(l1 - l0) equals the
2-class softmax, so the engine's argmax inference stays valid.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def _onehot(target: torch.Tensor, n_classes: int, dtype: torch.dtype) -> torch.Tensor:
    oh = F.one_hot(target.long(), n_classes)  # [B, *spatial, C]
    return oh.movedim(-1, 1).to(dtype)


def _weights(class_weights: Sequence[float] | None, n: int, ref: torch.Tensor) -> torch.Tensor:
    if class_weights is None:
        return torch.ones(n, dtype=ref.dtype, device=ref.device)
    if len(class_weights) != n:
        raise ValueError(f"class_weights has {len(class_weights)} values for {n} classes")
    return torch.as_tensor(list(class_weights), dtype=ref.dtype, device=ref.device)


def _bcast(w: torch.Tensor, ndim: int) -> torch.Tensor:
    return w.view(1, -1, *([1] * (ndim - 2)))


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, class_weights=None) -> torch.Tensor:
    """Weighted CE, normalised by the summed weights of the targets (as torch's weighted mean)."""
    logits = logits.float()
    c = logits.shape[1]
    oh = _onehot(target, c, logits.dtype)
    w = _bcast(_weights(class_weights, c, logits), logits.ndim)
    logp = F.log_softmax(logits, dim=1)
    per_voxel_w = (oh * w).sum(1)
    return -(oh * w * logp).sum() / per_voxel_w.sum().clamp_min(1e-8)


def focal(logits: torch.Tensor, target: torch.Tensor, class_weights=None, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al.): CE scaled by (1 - p_t)^gamma; gamma=0 is weighted CE."""
    logits = logits.float()
    c = logits.shape[1]
    oh = _onehot(target, c, logits.dtype)
    w = _bcast(_weights(class_weights, c, logits), logits.ndim)
    logp = F.log_softmax(logits, dim=1)
    logpt = (oh * logp).sum(1, keepdim=True)
    mod = (1.0 - logpt.exp()).clamp_min(0.0) ** gamma
    per_voxel_w = (oh * w).sum(1)
    return -(oh * w * mod * logp).sum() / per_voxel_w.sum().clamp_min(1e-8)


def soft_dice(logits: torch.Tensor, target: torch.Tensor, class_weights=None,
              include_background: bool = False, smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over classes, pooled over the batch (stable with empty patches)."""
    logits = logits.float()
    c = logits.shape[1]
    probs = F.softmax(logits, dim=1)
    oh = _onehot(target, c, probs.dtype)
    dims = (0,) + tuple(range(2, logits.ndim))
    inter = (probs * oh).sum(dims)
    denom = probs.sum(dims) + oh.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    w = _weights(class_weights, c, probs)
    if not include_background and c > 1:
        dice, w = dice[1:], w[1:]
    return 1.0 - (dice * w).sum() / w.sum().clamp_min(1e-8)


def bce(logits: torch.Tensor, target: torch.Tensor, class_weights=None) -> torch.Tensor:
    """Binary cross-entropy for 2-channel logits; class_weights = [w_bg, w_fg] per voxel."""
    logits = logits.float()
    if logits.shape[1] != 2:
        raise ValueError("bce needs out_channels=2 (background, foreground)")
    z = logits[:, 1] - logits[:, 0]
    y = (target > 0).to(z.dtype)
    w = _weights(class_weights, 2, z)
    vw = w[0] * (1 - y) + w[1] * y
    return F.binary_cross_entropy_with_logits(z, y, weight=vw, reduction="sum") / vw.sum().clamp_min(1e-8)


def build_loss(name: str, class_weights: Sequence[float] | None = None,
               focal_gamma: float = 2.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Loss by config name: ce | dice | dice_ce | focal | bce."""
    if name == "ce":
        return lambda x, y: cross_entropy(x, y, class_weights)
    if name == "dice":
        return lambda x, y: soft_dice(x, y, class_weights)
    if name == "dice_ce":
        return lambda x, y: soft_dice(x, y, class_weights) + cross_entropy(x, y, class_weights)
    if name == "focal":
        return lambda x, y: focal(x, y, class_weights, focal_gamma)
    if name == "bce":
        return lambda x, y: bce(x, y, class_weights)
    raise ValueError(f"unknown loss '{name}': use ce, dice, dice_ce, focal or bce")
