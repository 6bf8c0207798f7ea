"""Synthetic liver lesions painted into training patches (on the training device).

Why: the real data we may train on holds one CT with tumours. Synthetic
tumours inside real livers (Hu et al., "Label-free liver tumor segmentation",
CVPR 2023) teach a network what a focal lesion looks like, so it detects them
on scans whose training set had none. A lesion here is a noisy ellipsoid with
a soft rim, inside the liver mask only, mostly hypodense (metastases, HCC
wash-out, cysts), sometimes hyperdense, with its own texture; its voxels get
the tumour class.
"""
from __future__ import annotations

import math
from typing import Sequence


def _grid(shape: Sequence[int], device):
    import torch

    axes = [torch.arange(s, device=device, dtype=torch.float32) for s in shape]
    return torch.meshgrid(*axes, indexing="ij")


def add_lesions(image, target, g, cfg: dict, spacing: Sequence[float], liver_class: int = 1,
                tumor_class: int = 2, clip: Sequence[float] = (-2.0, 2.0)):
    """Paint up to ``cfg['max_count']`` lesions into each sample (probability ``cfg['prob']``).

    ``image`` [B, 1, *S] normalised, ``target`` [B, *S] class indices; ``spacing``
    (i, j[, k]) mm of the stage grid. Returns new (image, target).
    """
    import torch
    import torch.nn.functional as F

    from .random_fields import _smooth_field, _u

    b, nd, dev = image.shape[0], image.dim() - 2, image.device
    shape = tuple(image.shape[2:])
    sp = torch.tensor([float(s) for s in spacing][::-1][-nd:], device=dev)   # (k, j, i) mm
    prob, max_count = float(cfg.get("prob", 0.5)), int(cfg.get("max_count", 3))
    r_lo, r_hi = (float(v) for v in cfg.get("radius_mm", (4.0, 20.0)))
    coords = torch.stack(_grid(shape, dev), 0)                                   # [nd, *S]
    image, target = image.clone(), target.clone()
    for s in range(b):
        liver = target[s] == liver_class
        n_liver = int(liver.sum())
        if n_liver < 50 or float(torch.rand(1, generator=g, device=dev)) >= prob:
            continue
        inside = image[s, 0][liver]
        base = float(inside.mean())
        count = 1 + int(torch.randint(max_count, (1,), generator=g, device=dev))
        flat = torch.nonzero(liver.reshape(-1)).squeeze(1)
        for _ in range(count):
            centre_idx = flat[torch.randint(flat.numel(), (1,), generator=g, device=dev)]
            centre = torch.stack(torch.unravel_index(centre_idx, shape), 0).float().reshape(nd, *(1,) * nd)
            # Log-uniform radius: small lesions are as common as large ones.
            radius = math.exp(float(_u(g, 1, math.log(r_lo), math.log(r_hi), dev)))
            axes_mm = radius * _u(g, nd, 0.7, 1.3, dev)
            d2 = (((coords - centre) * sp.view(nd, *(1,) * nd)) / axes_mm.view(nd, *(1,) * nd)) ** 2
            dist = d2.sum(0).sqrt()
            dist = dist + 0.25 * _smooth_field(g, 1, shape, 6, dev)[0, 0]       # irregular outline
            rim = max(0.05, 1.0 / max(radius, 1.0))                               # ~1 mm soft edge
            weight = torch.sigmoid((1.0 - dist) / rim) * liver
            if float(weight.sum()) < 1.0:
                continue
            hyper = float(torch.rand(1, generator=g, device=dev)) < float(cfg.get("hyper_prob", 0.2))
            contrast = float(_u(g, 1, 0.3, 0.8, dev)) if hyper else -float(_u(g, 1, 0.3, 1.2, dev))
            texture = float(_u(g, 1, 0.0, 0.15, dev)) * torch.randn(shape, generator=g, device=dev)
            if nd == 3:
                texture = F.avg_pool3d(texture[None, None], 3, 1, 1)[0, 0]
            lesion_value = base + contrast + texture
            image[s, 0] = image[s, 0] * (1 - weight) + lesion_value * weight
            target[s][(weight > 0.5) & liver] = tumor_class
    return image.clamp_(float(clip[0]), float(clip[1])), target
