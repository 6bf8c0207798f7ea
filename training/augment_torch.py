"""Batched augmentation on the training device (GPU, or CPU), in torch.

Why not MONAI here: MONAI transforms run per sample on CPU workers; on a GPU
the network then waits for them (measured in the feasibility study: 0.24 s of
0.66 s per CPU iteration was augmentation). These transforms take a whole
batch already on the device, so a GPU trains at its own speed. The MONAI path
(``augment.py``) stays the default for CPU runs; ``augmentation.backend: torch``
selects this one.

One call turns raw cached labels (organ values) and a crop that is larger than
the patch (``context`` gives room to rotate without padding) into
(image, class target) patches:

1. organ intensity randomisation: each neighbouring organ (cached values >= 3,
   from a multi-organ label map) and the liver get their own random intensity
   shift, so the network cannot rely on the spleen or kidneys being brighter
   or darker than the liver in one scan (SynthSeg-style, on real CT texture);
2. synthetic liver lesions (``lesion_synth``) for stages that label tumour:
   ellipsoids, and real tumour shapes when ``lesions.shapes`` names anatomy maps;
3. one spatial warp: random rotation and scale (affine) plus an optional
   smooth elastic field, sampled once with ``grid_sample`` (image linear,
   labels nearest) from the crop's centre;
4. intensity: contrast/brightness, gamma, a smooth additive bias field,
   blur or low resolution, and noise.

Everything is drawn from one ``torch.Generator`` per batch, so a run with one
seed on one device is reproducible.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .random_fields import _smooth_field, _u

CLIP = (-2.0, 2.0)  # normalised units of the default intensity spec (-200..300 HU)


def _coin(g, n: int, p: float, device):
    import torch

    return torch.rand(n, generator=g, device=device) < p


def _rotation(angles, nd: int):
    """[B, nd, nd] rotation matrices from [B, 3] (3D, about x, y, z) or [B, 1] (2D) angles."""
    import torch

    if nd == 2:
        c, s = torch.cos(angles[:, 0]), torch.sin(angles[:, 0])
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    b = angles.shape[0]
    mats = []
    for ax in range(3):
        c, s = torch.cos(angles[:, ax]), torch.sin(angles[:, ax])
        m = torch.eye(3, device=angles.device).repeat(b, 1, 1)
        i, j = [a for a in range(3) if a != ax]
        m[:, i, i], m[:, i, j], m[:, j, i], m[:, j, j] = c, -s, s, c
        mats.append(m)
    return mats[0] @ mats[1] @ mats[2]


class TorchAugmenter:
    """Callable ``(image [B,1,*crop], raw_labels [B,*crop], generator) -> (image [B,1,*patch], target [B,*patch])``."""

    def __init__(self, aug: dict, patch_size: Sequence[int], label_to_class: np.ndarray,
                 lesions: dict | None = None, spacing: Sequence[float] | None = None,
                 liver_class: int = 1, tumor_class: int | None = None,
                 clip: Sequence[float] = CLIP) -> None:
        self.aug = dict(aug or {})
        self.patch = tuple(int(p) for p in patch_size)
        self.nd = len(self.patch)
        context = float(self.aug.get("context", 1.25))
        # The crop is larger than the patch so rotations/scales rarely reach its border.
        self.crop = tuple(int(math.ceil(p * context / 2.0)) * 2 for p in self.patch)
        self.lut_np = np.asarray(label_to_class, dtype=np.int64)
        self.lesions = dict(lesions or {}) if (lesions or {}).get("enabled", False) else None
        self.spacing = tuple(float(s) for s in (spacing or (1.0,) * self.nd))
        self.liver_class, self.tumor_class = int(liver_class), tumor_class
        self.shapes = None
        if self.lesions is not None and self.lesions.get("shapes"):
            from .tumour_shapes import TumourShapeBank

            # Real tumour outlines on this stage's grid, once per stage; none wider than the patch.
            self.shapes = TumourShapeBank.from_folder(self.lesions["shapes"], self.spacing, max_extent=self.patch,
                                                      cache_dir=self.lesions.get("shapes_cache"))
        self.clip = (float(clip[0]), float(clip[1]))   # the stage's HU window in normalised units
        self._lut = None

    # ------------------------------------------------------------ helpers
    def _lut_on(self, device):
        import torch

        if self._lut is None or self._lut.device != device:
            self._lut = torch.as_tensor(self.lut_np, device=device)
        return self._lut

    def _organ_shift(self, image, raw, g):
        """Per-sample random intensity offsets per organ value (>= 3) and for the liver (1, 2)."""
        import torch

        p = float(self.aug.get("organ_prob", 0.0))
        if p <= 0:
            return image
        b, dev = image.shape[0], image.device
        amp = float(self.aug.get("organ_shift", 0.8))
        liver_amp = float(self.aug.get("liver_shift", 0.4))
        shifts = _u(g, (b, 256), -amp, amp, dev)
        liver = _u(g, (b, 1), -liver_amp, liver_amp, dev)
        shifts[:, 0] = 0.0
        shifts[:, 1:3] = liver
        shifts *= _coin(g, b, p, dev)[:, None].float()
        delta = torch.gather(shifts, 1, raw.reshape(b, -1).long()).reshape(raw.shape)
        return (image + delta[:, None]).clamp_(*self.clip)

    def _warp(self, image, target, g):
        """Affine (+ elastic) resampling from the crop's centre to the patch size."""
        import torch
        import torch.nn.functional as F

        a, b, dev, nd = self.aug, image.shape[0], image.device, self.nd
        rot = math.radians(float(a.get("rotate_deg", 0.0)))
        scale = float(a.get("scale", 0.0))
        do_aff = _coin(g, b, float(a.get("affine_prob", 0.0)), dev)
        n_ang = 3 if nd == 3 else 1
        angles = _u(g, (b, n_ang), -rot, rot, dev) * do_aff[:, None]
        zoom = 1.0 + _u(g, (b, 1), -scale, scale, dev) + _u(g, (b, nd), -scale / 3, scale / 3, dev)
        zoom = torch.where(do_aff[:, None], zoom, torch.ones_like(zoom))
        ep = float(a.get("elastic_prob", 0.0))
        if ep <= 0 and not bool(do_aff.any()):
            # Nothing moves: cut the centre exactly (no interpolation round-off).
            lo = [(c - p) // 2 for c, p in zip(self.crop, self.patch)]
            centre = tuple(slice(x, x + p) for x, p in zip(lo, self.patch))
            return image[(slice(None), slice(None)) + centre], target[(slice(None),) + centre]
        mat = _rotation(angles, nd) * zoom[:, None, :]          # [B, nd, nd] in (x, y[, z]) = (i, j[, k])
        h_out = torch.tensor([(p - 1) / 2 for p in self.patch[::-1]], device=dev)
        h_in = torch.tensor([(c - 1) / 2 for c in self.crop[::-1]], device=dev)
        theta = (mat * h_out[None, None, :]) / h_in[None, :, None]
        theta = torch.cat([theta, torch.zeros(b, nd, 1, device=dev)], dim=2)
        size = (b, 1) + self.patch
        grid = F.affine_grid(theta, size, align_corners=True)    # [B, *patch, nd] (x, y[, z])
        if ep > 0:
            on = _coin(g, b, ep, dev).float()
            mag = float(a.get("elastic_voxels", 4.0))
            disp = torch.cat([_smooth_field(g, b, self.patch, int(a.get("elastic_nodes", 5)), dev)
                              for _ in range(nd)], dim=1)       # [B, nd, *patch] voxels / mag
            disp = disp * (mag * on)[(slice(None),) + (None,) * (nd + 1)]
            disp = disp.permute(0, *range(2, nd + 2), 1) / h_in  # normalised (x, y[, z])
            grid = grid + disp
        mode = "bilinear"
        img = F.grid_sample(image, grid, mode=mode, padding_mode="border", align_corners=True)
        tgt = F.grid_sample(target[:, None].float(), grid, mode="nearest", padding_mode="border",
                            align_corners=True)[:, 0].round().long()
        return img, tgt

    def _intensity(self, x, g):
        import torch
        import torch.nn.functional as F

        a, b, dev, nd = self.aug, x.shape[0], x.device, self.nd
        view = (b,) + (1,) * (nd + 1)
        ip = float(a.get("intensity_prob", 0.0))
        if ip > 0:
            on = _coin(g, b, ip, dev)
            s = 1.0 + _u(g, b, -1, 1, dev) * float(a.get("intensity_scale", 0.1)) * on
            t = _u(g, b, -1, 1, dev) * float(a.get("intensity_shift", 0.1)) * on
            x = x * s.view(view) + t.view(view)
        gp = float(a.get("gamma_prob", 0.0))
        if gp > 0:
            lo_g, hi_g = (float(v) for v in a.get("gamma", (0.8, 1.25)))
            on = _coin(g, b, gp, dev)
            gam = torch.where(on, torch.exp(_u(g, b, math.log(lo_g), math.log(hi_g), dev)), torch.ones(b, device=dev))
            lo = x.amin(dim=tuple(range(1, nd + 2)), keepdim=True)
            hi = x.amax(dim=tuple(range(1, nd + 2)), keepdim=True)
            rng = (hi - lo).clamp_min(1e-6)
            x = ((x - lo) / rng).clamp_(0, 1).pow(gam.view(view)) * rng + lo
        bp = float(a.get("bias_prob", 0.0))
        if bp > 0:
            on = _coin(g, b, bp, dev).float()
            field = _smooth_field(g, b, self.patch, int(a.get("bias_nodes", 4)), dev)
            x = x + field * (float(a.get("bias_amplitude", 0.2)) * on).view(view)
        lp = float(a.get("lowres_prob", 0.0))
        if lp > 0:
            on = _coin(g, b, lp, dev)
            if bool(on.any()):
                f = float(_u(g, 1, 0.5, 1.0, dev))
                small = [max(2, int(round(p * f))) for p in self.patch]
                mode = "trilinear" if nd == 3 else "bilinear"
                low = F.interpolate(F.interpolate(x, size=small, mode=mode, align_corners=False),
                                    size=self.patch, mode=mode, align_corners=False)
                x = torch.where(on.view(view), low, x)
        np_ = float(a.get("noise_prob", 0.0))
        if np_ > 0:
            on = _coin(g, b, np_, dev).float()
            std = _u(g, b, 0, float(a.get("noise_std", 0.05)), dev) * on
            x = x + torch.randn(x.shape, generator=g, device=dev) * std.view(view)
        return x

    # ------------------------------------------------------------- call
    def __call__(self, image, raw, g) -> tuple[Any, Any]:
        image = image.float()
        raw = raw.long()
        image = self._organ_shift(image, raw, g)
        target = self._lut_on(image.device)[raw]
        if self.lesions is not None and self.tumor_class is not None:
            from .lesion_synth import add_lesions

            image, target = add_lesions(image, target, g, self.lesions, self.spacing,
                                        self.liver_class, int(self.tumor_class), self.clip, shapes=self.shapes)
        image, target = self._warp(image, target, g)
        return self._intensity(image, g), target


def build_torch_augmentation(aug: dict, patch_size: Sequence[int], label_to_class: np.ndarray, **kw) -> TorchAugmenter:
    """Config ``train.augmentation`` (``backend: torch``) -> a :class:`TorchAugmenter`.

    With augmentation disabled it still maps labels to classes and cuts the patch from the crop.
    """
    if not aug or not aug.get("enabled", True):
        aug = {"context": 1.0}
    return TorchAugmenter(aug, patch_size, label_to_class, **kw)
