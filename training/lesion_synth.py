"""Synthetic liver lesions painted into training patches (on the training device).

Why: the real data we may train on holds one CT with tumours. Synthetic
tumours inside real livers (Hu et al., "Label-free liver tumor segmentation",
CVPR 2023) teach a network what a focal lesion looks like, so it detects them
on scans whose training set had none. A lesion here is a noisy ellipsoid with
a soft rim or, given a bank of real tumour outlines (``tumour_shapes``), one of
those, randomly flipped; inside the liver mask only, mostly hypodense (metastases, HCC
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


def _shape_weight(shapes, g, centre_idx, shape: Sequence[int], dev):
    """A random bank shape (random flips), centred on ``centre_idx``, as a soft weight over ``shape``.

    Weight = (mask + its 3-voxel mean) / 2: above 0.5 exactly on the expert mask, so the tumour
    label keeps the real outline voxel for voxel, while the intensity blends over a one-voxel rim.
    """
    import torch
    import torch.nn.functional as F

    nd = len(shape)
    m = shapes.shapes[int(torch.randint(len(shapes), (1,), generator=g, device=dev))]
    if nd == 2:                                    # 2D patches: the shape's largest cross-section
        m = m[int(m.sum(axis=(1, 2)).argmax())]
    flips = torch.rand(nd, generator=g, device=dev) < 0.5    # tumours have no laterality
    m = torch.as_tensor(m, device=dev).float()
    m = m.flip([d for d in range(nd) if bool(flips[d])])
    m = F.pad(m, (1, 1) * nd)
    pool = F.avg_pool3d if nd == 3 else F.avg_pool2d
    soft = 0.5 * (m + pool(m[None, None], 3, 1, 1)[0, 0])
    centre = torch.unravel_index(centre_idx, tuple(shape))
    weight = torch.zeros(tuple(shape), device=dev)
    dst, src = [], []
    for c, n, size in zip(centre, soft.shape, shape):
        lo = int(c) - n // 2
        a, b = max(lo, 0), min(lo + n, size)
        dst.append(slice(a, b))
        src.append(slice(a - lo, b - lo))
    weight[tuple(dst)] = soft[tuple(src)]
    return weight


def add_lesions(image, target, g, cfg: dict, spacing: Sequence[float], liver_class: int = 1,
                tumor_class: int = 2, clip: Sequence[float] = (-2.0, 2.0), shapes=None):
    """Paint up to ``cfg['max_count']`` lesions into each sample (probability ``cfg['prob']``).

    ``image`` [B, 1, *S] normalised, ``target`` [B, *S] class indices; ``spacing``
    (i, j[, k]) mm of the stage grid. With a ``tumour_shapes.TumourShapeBank`` (on that grid) as
    ``shapes``, each lesion is a real tumour shape with probability ``cfg['shape_prob']`` (0.5),
    else an ellipsoid; without one the draws are exactly those of ellipsoids only.
    Returns new (image, target).
    """
    import torch
    import torch.nn.functional as F

    from .random_fields import _smooth_field, _u

    b, nd, dev = image.shape[0], image.dim() - 2, image.device
    shape = tuple(image.shape[2:])
    sp = torch.tensor([float(s) for s in spacing][::-1][-nd:], device=dev)   # (k, j, i) mm
    prob, max_count = float(cfg.get("prob", 0.5)), int(cfg.get("max_count", 3))
    r_lo, r_hi = (float(v) for v in cfg.get("radius_mm", (4.0, 20.0)))
    shapes = shapes if shapes is not None and len(shapes) else None
    shape_prob = float(cfg.get("shape_prob", 0.5))
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
            # The coin is drawn only with a bank, so runs without one keep their exact draws.
            if shapes is not None and float(torch.rand(1, generator=g, device=dev)) < shape_prob:
                weight = _shape_weight(shapes, g, centre_idx, shape, dev) * liver
            else:
                centre = torch.stack(torch.unravel_index(centre_idx, shape), 0).float().reshape(nd, *(1,) * nd)
                # Log-uniform radius: small lesions are as common as large ones.
                radius = math.exp(float(_u(g, 1, math.log(r_lo), math.log(r_hi), dev)))
                axes_mm = radius * _u(g, nd, 0.7, 1.3, dev)
                d2 = (((coords - centre) * sp.view(nd, *(1,) * nd)) / axes_mm.view(nd, *(1,) * nd)) ** 2
                dist = d2.sum(0).sqrt()
                dist = dist + 0.25 * _smooth_field(g, 1, shape, 6, dev)[0, 0]   # irregular outline
                rim = max(0.05, 1.0 / max(radius, 1.0))                           # ~1 mm soft edge
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
