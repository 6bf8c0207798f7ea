"""CPU inference executor for the ``reduced_unet3d`` network: same logits, less time and memory.

``networks.UNet`` is written for training; run as is in float32 on a CPU without
native bf16 (AVX2), a 112x144x160 fine window costs ~2.5 s and ~1 GB (profiled
on 2 cores, see bench/RESULTS.md 2026-12-04). Where it goes, and what this does:

- Batch norm (eval) is a per-channel affine map: folded into the preceding
  conv's weights and bias, with the ReLU fused into the convolution (oneDNN
  post-op) where torch offers it. No separate BN/ReLU passes over the maps.
- torch sends some 3D convs to its im2col fallback (``slow_conv3d``) by a size
  heuristic on the first four dims: the 1->8 full-resolution conv alone
  allocates a 27x copy of the input (280 MB). Calling oneDNN directly avoids it.
- Decoder levels compute ``conv3x3x3(cat[nearest_up(y), skip])``; the upsampled
  map and the concatenation are the largest tensors of the pass (400 MB at
  full resolution). Convolving a nearest-upsampled map equals, per output
  parity, a 2x2x2 convolution of the low-resolution map with summed weights,
  so the up-sampled half is computed at low resolution (8 parities as one
  conv with 8x the output channels, then interleaved) and the skip half is a
  conv of its own, added. Exact up to float32 rounding.

Only networks it can reproduce are accepted (``supports``); everything else
runs through torch as before. Tests compare its logits with the module's.
"""
from __future__ import annotations

import os
import weakref
from typing import Any, Optional

__all__ = ["supports", "FastUNet", "fast_network", "cpu_executor"]


def supports(net: Any) -> bool:
    """True for an eval-mode 3D ``UNet`` with batch norm or none (window-size invariant)."""
    from torch import nn

    if type(net).__name__ != "UNet" or getattr(net, "dims", 3) != 3 or net.training:
        return False
    for m in net.modules():
        if isinstance(m, (nn.InstanceNorm3d, nn.GroupNorm, nn.Dropout3d)) or isinstance(m, nn.Conv2d):
            return False
    return True


TAIL_SLAB_VOXELS = 1 << 18  # full-resolution voxels per slab of the tail (~8 MB per 8-channel map)


def _fold(conv, norm) -> tuple:
    """(weight, bias) of ``norm(conv(x))`` as one conv (eval-mode batch norm, or no norm)."""
    import torch
    from torch import nn

    w = conv.weight.detach().float()
    b = conv.bias.detach().float() if conv.bias is not None else torch.zeros(w.shape[0])
    if isinstance(norm, nn.BatchNorm3d):
        scale = norm.weight.detach().float() / torch.sqrt(norm.running_var.float() + norm.eps)
        w = w * scale.view(-1, 1, 1, 1, 1)
        b = (b - norm.running_mean.float()) * scale + norm.bias.detach().float()
    return w.contiguous(), b.contiguous()


def _parity_weights(w) -> Any:
    """3x3x3 kernel over a nearest-x2-upsampled map -> 2x2x2 kernels (8 parities stacked on the
    output channels, parity-major) for a padding-1 conv of the low-resolution map.

    Per axis, output 2p+q sees low-resolution rows {p-1, p, p} (q=0) or {p, p, p+1} (q=1):
    q=0 -> taps [w0, w1+w2] at rows (p-1, p); q=1 -> [w0+w1, w2] at rows (p, p+1).
    """
    import torch

    def split(t, axis):
        a, b_, c = t.unbind(axis)
        return (torch.stack([a, b_ + c], axis), torch.stack([a + b_, c], axis))

    out = []
    for kz in split(w, 2):
        for ky in split(kz, 3):
            for kx in split(ky, 4):
                out.append(kx)
    return torch.cat(out, 0).contiguous()


def _parity(w) -> tuple:
    """(the 8 parities' weights stacked, zero bias) for ``FastUNet._up_conv``."""
    import torch

    wp = _parity_weights(w)
    return wp, torch.zeros(wp.shape[0])


def _add_parities(out, par, rows: int) -> None:
    """``out[:, :, 2p+qz, 2q+qy, 2r+qx] += par[:, i*C:(i+1)*C, p+qz, q+qy, r+qx]`` for the 8 parities
    i = 4qz + 2qy + qx, as ONE strided add (8 separate adds were 8 thread-pool round trips per call,
    which cost most when the cores are shared). ``rows``: output rows p (dim 2) to fill."""
    n, c = out.shape[:2]
    h, w = out.shape[3] // 2, out.shape[4] // 2
    so, sp = out.stride(), par.stride()
    size = (n, c, rows, 2, h, 2, w, 2)
    dst = out.as_strided(size, (so[0], so[1], 2 * so[2], so[2], 2 * so[3], so[3], 2 * so[4], so[4]),
                         out.storage_offset())
    src = par.as_strided(size, (sp[0], sp[1], sp[2], 4 * c * sp[1] + sp[2], sp[3], 2 * c * sp[1] + sp[3],
                                sp[4], c * sp[1] + sp[4]), par.storage_offset())
    dst += src


class FastUNet:
    """Callable ``x [1, 1, D, H, W] -> logits`` with the folded weights of a ``UNet`` (see module doc)."""

    def __init__(self, net: Any) -> None:
        import torch

        if not supports(net):
            raise ValueError("FastUNet reproduces eval-mode 3D UNets with batch norm or no norm only")
        self.stem = _fold(net.stem[0], net.stem[1]) if net.stem is not None else None
        self.inc = self._block(net.inc)
        self.downs = [(_fold(d[0], None), self._block(d[1])) for d in net.downs]
        self.mid = self._block(net.mid)
        self.ups = []
        below = net.mid.conv2.out_channels
        for blk in net.ups:
            w1, b1 = _fold(blk.conv1, blk.norm1)
            self.ups.append((_parity(w1[:, :below]), w1[:, below:].contiguous(), b1,
                             _fold(blk.conv2, blk.norm2)))
            below = blk.conv2.out_channels
        if net.stem is not None:
            self.full_res = _fold(net.full_res[0], None)
            w, b = _fold(net.refine[0], net.refine[1])
            self.refine = (_parity(w[:, :below]), w[:, below:].contiguous(), b)
        self.outc = _fold(net.outc, None)
        self.tail_slab_voxels = TAIL_SLAB_VOXELS
        self._pointwise = hasattr(torch.ops, "mkldnn") and hasattr(torch.ops.mkldnn, "_convolution_pointwise")

    @staticmethod
    def _block(blk) -> tuple:
        return _fold(blk.conv1, blk.norm1), _fold(blk.conv2, blk.norm2)

    # ------------------------------------------------------------------ ops
    def _conv(self, x, wb, padding: int = 1, stride: int = 1, relu: bool = True):
        import torch

        w, b = wb
        if self._pointwise and x.dtype == torch.float32 and x.device.type == "cpu":
            return torch.ops.mkldnn._convolution_pointwise(
                x, w, b, [padding] * 3, [stride] * 3, [1] * 3, 1, "relu" if relu else "none", [], "")
        y = torch.nn.functional.conv3d(x, w.to(x.dtype), b.to(x.dtype), stride=stride, padding=padding)
        return torch.relu_(y) if relu else y

    def _up_conv(self, low, skip: list, wp, ws, b):
        """``conv3x3x3(cat[nearest_up(low), skip]) + b`` without building the upsampled map (no ReLU).

        ``skip`` is a one-item list, emptied here: the skip map is freed once convolved (memory).
        One conv computes the 8 parities (8x the output channels): measured ~8x faster than 8 narrow
        convs at the coarse levels, where oneDNN's per-call cost dominates.
        """
        out = self._conv(skip.pop(), (ws, b), padding=1, relu=False)  # [N, C, 2d, 2h, 2w]
        par = self._conv(low, wp, padding=1, relu=False)  # [N, 8*C, d+1, h+1, w+1]
        _add_parities(out, par, low.shape[2])
        return out

    def _rows(self, x, x0: int, total: int, wb, lo: int, hi: int, k: int, padding: int, relu: bool):
        """Rows ``[lo, hi)`` (dim 2) of ``conv(X, wb, padding)`` for a map X of ``total`` rows of which
        ``x`` holds rows ``[x0, x0 + len)``: exact, the zero padding applies at X's own ends only."""
        a, b = max(0, lo - padding), min(total, hi - padding + k - 1)
        return self._conv(x[:, :, a - x0:b - x0], wb, padding=padding, relu=relu)[:, :, lo - a:hi - a]

    def _tail(self, inp, y):
        """Logits of the full-resolution tail (full_res conv -> refine on [up(y), it] -> outc), in
        slabs of rows: only the input, the low-resolution ``y`` and the logits exist at full size."""
        import torch

        wp, ws, b = self.refine
        n, _, depth, hh, ww = inp.shape
        d = y.shape[2]
        step = max(2, (self.tail_slab_voxels // max(1, hh * ww)) // 2 * 2)
        logits = torch.empty((n, self.outc[0].shape[0], depth, hh, ww), dtype=torch.float32,
                             memory_format=torch.channels_last_3d)
        for z0 in range(0, depth, step):
            z1 = min(depth, z0 + step)
            f0, f1 = max(0, z0 - 1), min(depth, z1 + 1)
            f = self._rows(inp, 0, depth, self.full_res, f0, f1, 3, 1, True)
            out = self._rows(f, f0, depth, (ws, b), z0, z1, 3, 1, False)
            del f
            p0, p1 = z0 // 2, (z1 + 1) // 2 + 1
            par = self._rows(y, 0, d, wp, p0, p1, 2, 1, False)  # parity rows p0..p1 of the padded conv
            _add_parities(out, par, (z1 - z0) // 2)
            del par
            logits[:, :, z0:z1] = self._conv(torch.relu_(out), self.outc, padding=0, relu=False)
        return logits

    def __call__(self, x):
        import torch

        with torch.inference_mode():
            inp = x.float()
            h = self._conv(inp, self.stem, padding=0, stride=2) if self.stem is not None else inp
            skips = [self._conv(self._conv(h, self.inc[0]), self.inc[1])]
            del h
            for down, blk in self.downs:
                t = self._conv(skips[-1], down, padding=0, stride=2, relu=False)  # no norm or ReLU there
                skips.append(self._conv(self._conv(t, blk[0]), blk[1]))
                del t
            y = self._conv(self._conv(skips.pop(), self.mid[0]), self.mid[1])
            for wp, ws, b, conv2 in self.ups:
                y = self._conv(torch.relu_(self._up_conv(y, [skips.pop()], wp, ws, b)), conv2)
            if self.stem is not None:
                return self._tail(inp, y)
            return self._conv(y, self.outc, padding=0, relu=False)


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _fingerprint(net: Any) -> tuple:
    """Changes whenever a parameter or buffer is modified in place (training steps, load_state_dict)."""
    return tuple(t._version for t in list(net.parameters()) + list(net.buffers()))


def fast_network(net: Any) -> Optional[FastUNet]:
    """The executor for ``net`` (cached per module while its weights are unchanged), or None when
    it does not apply."""
    if not supports(net):
        return None
    key = _fingerprint(net)
    hit = _CACHE.get(net)
    if hit is None or hit[0] != key:
        hit = (key, FastUNet(net))
        _CACHE[net] = hit
    return hit[1]


def cpu_executor(net: Any, device: Any, bf16: bool) -> Optional[FastUNet]:
    """``FastUNet`` for float32 CPU inference of a supported network, else None (torch runs the module).

    bf16 runs (CPUs with native bf16/AMX) keep torch's autocast path. ``LIVERCT_FAST_UNET=0`` turns
    the executor off (benchmarks compare both in one run).
    """
    import torch

    if bf16 or torch.device(device).type != "cpu" or os.environ.get("LIVERCT_FAST_UNET", "1") == "0":
        return None
    if not (hasattr(torch.ops, "mkldnn") and torch.backends.mkldnn.is_available()):
        return None
    return fast_network(net)
