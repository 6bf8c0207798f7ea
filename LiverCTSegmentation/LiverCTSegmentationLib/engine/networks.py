"""Segmentation networks, built by name from a bundle's ``architecture`` dict.

All networks return **logits** (no softmax): inference applies the softmax
itself (so blending of overlapping windows happens on probabilities) and
training losses take logits.

Architectures
-------------
``reduced_unet3d``
    The mlf-core liver-ct-segmentation reduced 3D U-Net, done right. With
    ``channels=[32, 64, 128]`` it is the original: an input conv block at full
    resolution, ``len(channels)-1`` down-sampling steps (Conv3d kernel 2
    stride 2 followed by a conv block), a middle conv block at the lowest
    resolution (``middle_channels``, default ``channels[-1]``), nearest x2
    up-sampling + skip concatenation + conv block per level, and a 1x1x1 conv
    to ``out_channels``. A conv block is (Dropout3d -> Conv3d 3x3x3 -> Norm ->
    ReLU) x 2, except that there is **no dropout on the raw input** (the
    original's p=0.25 Dropout3d on a 1-channel input blanked whole samples).
    ``stem_stride=2`` adds a cheap stride-2 stem so the U-Net body runs at half
    resolution, then up-samples (nearest x2) and refines with a light
    full-resolution conv on ``[upsampled features, stem-free input features]``.
    Input sizes must be divisible by ``required_divisor(arch)`` =
    ``2 ** (len(channels) - 1)`` (times 2 with ``stem_stride=2``).
``unet2d``
    The same design in 2D for slice-wise models (e.g. MSD Task06 lung tumour);
    input ``[N, C, H, W]``, divisor ``2 ** (len(channels) - 1)``.
``threshold_net``
    **Test-only.** A pointwise network: logits = 1x1x1 conv of ``[x, x^2]``;
    with suitable weights, class ``c`` wins where the normalised intensity is in
    a window. Used by ``Testing/bundle_fixtures.make_box_bundle`` to get a
    bundle with predictable, non-empty output without training.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from .errors import BundleError

ARCHITECTURES = ("reduced_unet3d", "unet2d", "threshold_net")


# --------------------------------------------------------------------- blocks
# torch is imported only when a network is built: ModelBundle.load validates
# architectures with required_divisor() and must not pay torch's import.
@lru_cache(maxsize=1)
def _modules() -> dict:
    """The nn.Module classes (defined on first use, importing torch)."""
    import torch
    from torch import nn

    def _norm(kind: str, ch: int, dims: int) -> nn.Module:
        kind = (kind or "none").lower()
        if kind == "batch":
            return nn.BatchNorm3d(ch) if dims == 3 else nn.BatchNorm2d(ch)
        if kind == "instance":
            return nn.InstanceNorm3d(ch, affine=True) if dims == 3 else nn.InstanceNorm2d(ch, affine=True)
        if kind == "group":
            groups = next(g for g in (8, 4, 2, 1) if ch % g == 0)
            return nn.GroupNorm(groups, ch)
        if kind == "none":
            return nn.Identity()
        raise BundleError(f"Unknown norm '{kind}' in the network architecture (use batch, instance, group or none).")


    class ConvBlock(nn.Module):
        """(Dropout -> Conv 3x3(x3) -> Norm -> ReLU) x 2.

        ``input_dropout=False`` skips the first dropout: used when the block sees
        the raw image (dropping a whole 1-channel input zeroes the sample).
        """

        def __init__(self, in_ch: int, out_ch: int, norm: str, dropout: float, dims: int = 3,
                     input_dropout: bool = True) -> None:
            super().__init__()
            Conv = nn.Conv3d if dims == 3 else nn.Conv2d
            Drop = nn.Dropout3d if dims == 3 else nn.Dropout2d
            self.drop1 = Drop(dropout) if (dropout > 0 and input_dropout) else nn.Identity()
            self.conv1 = Conv(in_ch, out_ch, 3, padding=1)
            self.norm1 = _norm(norm, out_ch, dims)
            self.drop2 = Drop(dropout) if dropout > 0 else nn.Identity()
            self.conv2 = Conv(out_ch, out_ch, 3, padding=1)
            self.norm2 = _norm(norm, out_ch, dims)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.act(self.norm1(self.conv1(self.drop1(x))))
            return self.act(self.norm2(self.conv2(self.drop2(x))))


    class UNet(nn.Module):
        """Reduced U-Net (mlf-core layout) in 2D or 3D. Returns logits."""

        def __init__(self, in_channels: int, out_channels: int, channels: list[int], norm: str = "batch",
                     dropout: float = 0.0, dims: int = 3, middle_channels: int | None = None,
                     stem_stride: int = 1, refine_channels: int | None = None) -> None:
            super().__init__()
            if len(channels) < 1:
                raise BundleError("Network 'channels' must list at least one level.")
            if stem_stride not in (1, 2):
                raise BundleError("Network 'stem_stride' must be 1 or 2.")
            Conv = nn.Conv3d if dims == 3 else nn.Conv2d
            self.dims = dims
            self.stem_stride = stem_stride
            mid = int(middle_channels or channels[-1])
            c0 = channels[0]
            if stem_stride == 2:
                # Cheap stride-2 stem: everything heavy runs at half resolution.
                self.stem = nn.Sequential(Conv(in_channels, c0, 2, stride=2), _norm(norm, c0, dims), nn.ReLU(inplace=True))
                body_in, first_dropout = c0, True
            else:
                self.stem = None
                body_in, first_dropout = in_channels, False  # no dropout on the raw image
            self.inc = ConvBlock(body_in, c0, norm, dropout, dims, input_dropout=first_dropout)
            self.downs = nn.ModuleList()
            for lo, hi in zip(channels[:-1], channels[1:]):
                self.downs.append(nn.Sequential(Conv(lo, lo, 2, stride=2), ConvBlock(lo, hi, norm, dropout, dims)))
            self.mid = ConvBlock(channels[-1], mid, norm, dropout, dims)
            self.ups = nn.ModuleList()
            below = mid
            for skip in reversed(channels[:-1]):
                self.ups.append(ConvBlock(below + skip, skip, norm, dropout, dims))
                below = skip
            if stem_stride == 2:
                r = _tail_channels(refine_channels, c0)
                self.full_res = nn.Sequential(Conv(in_channels, r, 3, padding=1), nn.ReLU(inplace=True))
                self.refine = nn.Sequential(Conv(c0 + r, r, 3, padding=1), _norm(norm, r, dims), nn.ReLU(inplace=True))
                head_in = r
            else:
                self.full_res = self.refine = None
                head_in = c0
            self.outc = Conv(head_in, out_channels, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            up = nn.functional.interpolate
            inp = x
            if self.stem is not None:
                x = self.stem(x)
            skips = [self.inc(x)]
            for down in self.downs:
                skips.append(down(skips[-1]))
            y = self.mid(skips.pop())
            for block in self.ups:
                skip = skips.pop()
                y = block(torch.cat([up(y, scale_factor=2, mode="nearest"), skip], dim=1))
            if self.stem is not None:
                y = up(y, scale_factor=2, mode="nearest")
                y = self.refine(torch.cat([y, self.full_res(inp)], dim=1))
            return self.outc(y)


    class ThresholdNet(nn.Module):
        """TEST-ONLY pointwise network: logits = Conv1x1([x, x^2]).

        Setting, for class c, weight(x^2) = -1, weight(x) = 2 m, bias = r^2 - m^2
        gives logit_c = r^2 - (x - m)^2 > 0 exactly where |x - m| < r, so a
        background logit of 0 makes class c win inside an intensity window.
        """

        def __init__(self, in_channels: int = 1, out_channels: int = 2) -> None:
            super().__init__()
            if in_channels != 1:
                raise BundleError("threshold_net takes exactly one input channel.")
            self.head = nn.Conv3d(2, out_channels, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.cat([x, x * x], dim=1))

    for cls in (ConvBlock, UNet, ThresholdNet):  # picklable by name via the module __getattr__
        cls.__qualname__ = cls.__name__
        cls.__module__ = __name__
    return {"torch": torch, "nn": nn, "ConvBlock": ConvBlock, "UNet": UNet, "ThresholdNet": ThresholdNet}


def __getattr__(name: str) -> Any:  # PEP 562: networks.UNet etc. still work, lazily
    if name in ("torch", "nn", "ConvBlock", "UNet", "ThresholdNet"):
        return _modules()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------- factory
def _get(arch: dict, key: str, default: Any = None, required: bool = False) -> Any:
    if key not in arch:
        if required:
            raise BundleError(f"Network architecture '{arch.get('name')}' is missing '{key}'.")
        return default
    return arch[key]


def build_network(arch: dict) -> "nn.Module":
    """Build an untrained network from an architecture dict (see module doc)."""
    if not isinstance(arch, dict) or "name" not in arch:
        raise BundleError("The network architecture must be an object with a 'name'.")
    name = arch["name"]
    try:
        in_ch = int(_get(arch, "in_channels", 1))
        out_ch = int(_get(arch, "out_channels", required=True))
        if name == "threshold_net":
            return _modules()["ThresholdNet"](in_ch, out_ch)
        if name in ("reduced_unet3d", "unet2d"):
            channels = [int(c) for c in _get(arch, "channels", [32, 64, 128])]
            if any(c <= 0 for c in channels):
                raise BundleError("Network 'channels' must be positive integers.")
            return _modules()["UNet"](
                in_ch, out_ch, channels,
                norm=str(_get(arch, "norm", "batch")),
                dropout=float(_get(arch, "dropout", 0.0)),
                dims=3 if name == "reduced_unet3d" else 2,
                middle_channels=_get(arch, "middle_channels"),
                stem_stride=int(_get(arch, "stem_stride", 1)) if name == "reduced_unet3d" else 1,
                refine_channels=_get(arch, "refine_channels"),
            )
    except (TypeError, ValueError) as exc:
        raise BundleError(f"Invalid network architecture {arch!r}: {exc}") from exc
    raise BundleError(
        f"Unknown network architecture '{name}'. This version knows {', '.join(ARCHITECTURES)}; "
        "update LiverCTSegmentation or use a model made for this version."
    )


def _tail_channels(refine_channels: Any, c0: int) -> int:
    return int(refine_channels or max(4, int(c0) // 2))


def tail_width(arch: dict) -> int:
    """Channels of a stem-2 ``reduced_unet3d``'s full-resolution tail (``refine_channels``, default
    half of ``channels[0]``, at least 4): what its output layer reads."""
    return _tail_channels(arch.get("refine_channels"), int(arch.get("channels", [32, 64, 128])[0]))


def required_divisor(arch: dict) -> int:
    """Input spatial sizes must be multiples of this (patch sizes are checked against it)."""
    name = arch.get("name")
    if name == "threshold_net":
        return 1
    depth = len(arch.get("channels", [32, 64, 128]))
    d = 2 ** (depth - 1)
    if name == "reduced_unet3d" and int(arch.get("stem_stride", 1)) == 2:
        d *= 2
    return d


def spatial_dims(arch: dict) -> int:
    return 2 if arch.get("name") == "unet2d" else 3


def activation_bytes_per_voxel(arch: dict) -> float:
    """Float32 activation bytes per input voxel of one window: a lower-bound estimate (no torch).

    Counts two live feature maps (conv and norm output; ReLU is in place) per conv
    block, the concatenated skip at each level (1/8 of the voxels per level down in
    3D, 1/4 in 2D), plus the input and the logits. It stays below measured peaks
    (see ``inference.SINGLE_WINDOW_VOXELS``: 368 MB estimated vs 442 MB measured for
    a [8, 16, 32, 64] stem-2 network at 128^3), so a refusal based on it is no false alarm.
    """
    in_ch, out_ch = int(arch.get("in_channels", 1)), int(arch.get("out_channels", 2))
    if arch.get("name") == "threshold_net":
        return 4.0 * (in_ch + 2 + out_ch)
    shrink = 2 ** spatial_dims(arch)
    channels = [int(c) for c in arch.get("channels", [32, 64, 128])]
    seq = channels + [int(arch.get("middle_channels") or channels[-1])]
    body = sum(2.0 * (seq[lvl] + seq[lvl + 1]) / shrink ** lvl for lvl in range(len(channels)))
    full = float(in_ch + out_ch)
    if arch.get("name") == "reduced_unet3d" and int(arch.get("stem_stride", 1)) == 2:
        r = tail_width(arch)
        full += 2.0 * (channels[0] + 2 * r)  # [upsampled body, full-res features] -> refine
        body /= shrink
    return 4.0 * (full + body)


def count_parameters(net: "nn.Module") -> int:
    return sum(p.numel() for p in net.parameters())


def window_size_invariant(arch: dict) -> bool:
    """True when the network's output at a voxel does not depend on the window it is run in
    (beyond the receptive field): batch norm in eval mode or no norm. Instance/group norm
    normalise over the window, so such networks must run on training-sized windows."""
    if arch.get("name") == "threshold_net":
        return True
    return str(arch.get("norm", "batch")).lower() in ("batch", "none")
