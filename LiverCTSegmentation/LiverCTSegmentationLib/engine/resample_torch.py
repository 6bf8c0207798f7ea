"""Linear resampling on a torch device with SimpleITK's ``ResampleImageFilter`` semantics.

The pipeline uses it when it runs on a GPU. Handing a 512x512x300 CT to ITK first
copies it into a new ITK image (60-140 ms on the GPU hosts measured, more than the
two network passes together); on the GPU the CT is uploaded once and interpolated
there. ITK stays the resampler on the CPU and in training; the two agree to float32
rounding (``Testing/test_resample_torch.py`` compares them on random oblique grids).

ITK's linear interpolator under ``ResampleImageFilter``, reproduced here:

- output voxel -> physical point -> continuous index ``c`` of the source;
- the point is inside iff ``-0.5 <= c < n - 0.5`` on every axis, else it gets the
  default value;
- inside, trilinear interpolation between neighbours clamped to the edge voxels
  (``grid_sample`` with ``padding_mode="border"`` and ``align_corners=True``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .volume import Volume

CHUNK_VOXELS = 16_000_000  # output voxels per grid_sample call: the float64 index grid is 24 bytes each


def index_map(source: Volume, spacing: Sequence[float], origin: Sequence[float],
              direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(M, t)`` with ``c = M @ (i, j, k) + t``: the source's continuous index of a target voxel."""
    a = np.asarray(source.direction, float) @ np.diag(np.asarray(source.spacing, float))
    b = np.asarray(direction, float) @ np.diag(np.asarray(spacing, float))
    a_inv = np.linalg.inv(a)
    return a_inv @ b, a_inv @ (np.asarray(origin, float) - np.asarray(source.origin, float))


def resample_linear(data, source: Volume, size_ijk: Sequence[int], spacing: Sequence[float],
                    origin: Sequence[float], direction: np.ndarray, default_value: float):
    """``data`` (a (k, j, i) tensor on any device, laid out on ``source``'s grid; ``source.array``
    is not read) resampled onto the grid ``size_ijk``/``spacing``/``origin``/``direction``:
    a float32 (k, j, i) tensor on ``data``'s device."""
    import torch
    import torch.nn.functional as F

    m, t = index_map(source, spacing, origin, direction)
    dev = data.device
    n_src = torch.tensor(list(data.shape[::-1]), dtype=torch.float64, device=dev)  # (ni, nj, nk)
    src = data.to(torch.float32)[None, None]
    ni, nj, nk = (int(s) for s in size_ijk)
    out = torch.empty((nk, nj, ni), dtype=torch.float32, device=dev)
    mt = torch.as_tensor(m, dtype=torch.float64, device=dev)
    tt = torch.as_tensor(t, dtype=torch.float64, device=dev)
    ii = torch.arange(ni, dtype=torch.float64, device=dev)
    jj = torch.arange(nj, dtype=torch.float64, device=dev)
    step = max(1, CHUNK_VOXELS // max(1, ni * nj))
    scale = torch.where(n_src > 1, 2.0 / (n_src - 1).clamp(min=1), torch.zeros_like(n_src))
    for k0 in range(0, nk, step):
        kk = torch.arange(k0, min(nk, k0 + step), dtype=torch.float64, device=dev)
        # c[..., a] for source axis a (i, j, k), shape (k, j, i, 3)
        c = (ii[None, None, :, None] * mt[:, 0] + jj[None, :, None, None] * mt[:, 1]
             + kk[:, None, None, None] * mt[:, 2] + tt)
        inside = ((c >= -0.5) & (c < n_src - 0.5)).all(dim=-1)
        grid = (c * scale - (scale > 0).to(c.dtype)).to(torch.float32)  # grid_sample's [-1, 1], x = i
        val = F.grid_sample(src, grid[None], mode="bilinear", padding_mode="border", align_corners=True)[0, 0]
        out[k0:k0 + kk.numel()] = torch.where(inside, val, torch.full_like(val, float(default_value)))
    return out
