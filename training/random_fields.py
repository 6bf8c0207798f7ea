"""Random draws on the training device shared by the batch augmentation (``augment_torch``) and
the synthetic lesions (``lesion_synth``): uniform numbers and smooth random fields, all from the
batch's one ``torch.Generator`` (reproducible for a seed on a device)."""
from __future__ import annotations

from typing import Sequence


def _u(g, shape, lo: float, hi: float, device):
    """Uniform draws in [lo, hi) of ``shape``."""
    import torch

    return lo + (hi - lo) * torch.rand(shape, generator=g, device=device)


def _smooth_field(g, n: int, size: Sequence[int], nodes: int, device):
    """[n, 1, *size] smooth random field in about [-1, 1]: coarse noise, upsampled linearly."""
    import torch
    import torch.nn.functional as F

    nd = len(size)
    coarse = torch.randn((n, 1) + (nodes,) * nd, generator=g, device=device)
    mode = "trilinear" if nd == 3 else "bilinear"
    return F.interpolate(coarse, size=tuple(size), mode=mode, align_corners=True).clamp_(-2.5, 2.5) / 2.5
