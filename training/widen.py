"""Warm-start a ``reduced_unet3d`` stage with a wider full-resolution tail (``refine_channels``).

Why: the stem-2 network's last layer sees only the ``refine_channels`` features of its
full-resolution tail (8 by default). In round 3 of the CPU anatomy runs five of those eight had
near-identical output weights, so a wider tail was a candidate for the unlearnt tumour class. A
linear probe then found the 8 tail features about as informative about tumour as the 16 decoder
features below them (voxel AUC 0.81 vs 0.83), and round 4 learnt tumours with 8 channels
(training/README.md): the option is here, unmeasured in training. Widening a trained stage's tail,
instead of training a wide network from scratch, keeps everything the body has learnt.

The widening is function-preserving (Net2Net style): the old channels keep their weights,
the new ``full_res`` channels feed the old ``refine`` channels with zero weights, and the
output layer reads the new ``refine`` channels with zero weights. So the widened network's
logits equal the old network's, in eval and in train mode, until training moves the new
weights. The new channels themselves start from PyTorch's default initialisation, drawn
from a seeded generator.
"""
from __future__ import annotations

from typing import Any

from LiverCTSegmentationLib.engine.networks import tail_width

TAIL_KEYS = ("full_res.0.", "refine.0.", "refine.1.", "outc.")


def differs_only_in_tail_width(old_arch: dict, new_arch: dict) -> bool:
    """True when the two architectures are the same stem-2 network except a wider ``refine_channels``."""
    if old_arch.get("name") != "reduced_unet3d" or int(old_arch.get("stem_stride", 1)) != 2:
        return False
    rest_old = {k: v for k, v in old_arch.items() if k != "refine_channels"}
    rest_new = {k: v for k, v in new_arch.items() if k != "refine_channels"}
    return rest_old == rest_new and tail_width(new_arch) > tail_width(old_arch)


def widen_tail(old_state: dict, new_model: Any, seed: int = 0) -> dict:
    """A state dict for ``new_model`` (wider tail) that computes the same logits as ``old_state``.

    ``new_model`` supplies the shapes; its own random tail weights are replaced by a seeded
    draw so that the result depends only on ``old_state`` and ``seed``.
    """
    import torch

    new_state = {k: v.detach().clone() for k, v in new_model.state_dict().items()}
    missing = [k for k in new_state if k not in old_state]
    if missing:
        raise ValueError(f"the trained weights lack {missing[:3]}: not the same network")
    g = torch.Generator().manual_seed(int(seed))
    for k, v in new_state.items():
        old = old_state[k]
        if old.shape == v.shape:
            new_state[k] = old.detach().clone().to(v.dtype)
            continue
        if not k.startswith(TAIL_KEYS):
            raise ValueError(f"'{k}' differs in shape outside the tail: {tuple(old.shape)} vs {tuple(v.shape)}")
        new_state[k] = _grown(k, old, v, g)
    return new_state


def _grown(key: str, old: Any, like: Any, g: Any) -> Any:
    """One tail tensor: the old values in their place, new parts fresh (or zero where they would change the output)."""
    import torch

    if key.endswith("running_var") or (key.startswith("refine.1.") and key.endswith("weight")):
        out = torch.ones_like(like)
    elif key.endswith(("running_mean", "bias")) and key.startswith("refine.1."):
        out = torch.zeros_like(like)
    elif like.dim() >= 2:  # conv weight [out, in, k, k, k]: kaiming-uniform as nn.Conv3d draws it
        fan_in = like[0].numel()
        bound = (1.0 / fan_in) ** 0.5 * 3 ** 0.5 * (2.0 / (1 + 5)) ** 0.5  # a = sqrt(5), torch's default
        out = (torch.rand(like.shape, generator=g, dtype=like.dtype) * 2 - 1) * bound
    else:  # conv bias
        out = (torch.rand(like.shape, generator=g, dtype=like.dtype) * 2 - 1) * 0.01
    idx = tuple(slice(0, n) for n in old.shape)
    out[idx] = old.to(like.dtype)
    if key == "outc.weight":
        out[:, old.shape[1]:] = 0.0  # the output ignores the new features until trained
    if key == "refine.0.weight":
        # input = [upsampled body (c0), full_res (r)]: the old outputs ignore the new full_res channels
        c0 = old.shape[1] - _old_width(old)
        out[: old.shape[0], c0 + _old_width(old):] = 0.0
    return out


def _old_width(refine_weight: Any) -> int:
    """The old tail width r: refine.0 maps (c0 + r) inputs to r outputs."""
    return int(refine_weight.shape[0])
