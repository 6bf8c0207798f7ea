"""Widening the full-resolution tail of a trained stem-2 network keeps its logits (training/widen.py)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from LiverCTSegmentationLib.engine.networks import build_network  # noqa: E402
from liverct_training.widen import differs_only_in_tail_width, tail_width, widen_tail  # noqa: E402

ARCH = {"name": "reduced_unet3d", "in_channels": 1, "out_channels": 3, "channels": [4, 8, 16],
        "norm": "batch", "dropout": 0.0, "stem_stride": 2}


def _trained_like(arch: dict, seed: int) -> "torch.nn.Module":
    """A network with non-trivial weights and batch-norm statistics (as after training)."""
    torch.manual_seed(seed)
    net = build_network(arch)
    with torch.no_grad():
        for k, v in net.state_dict().items():
            if "running_var" in k:
                v.uniform_(0.5, 2.0)
            elif "running_mean" in k or k.endswith("bias"):
                v.uniform_(-0.3, 0.3)
    return net


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_widened_network_gives_the_same_logits(mode):
    old = _trained_like(ARCH, 0)
    wide_arch = dict(ARCH, refine_channels=9)
    wide = build_network(wide_arch)
    wide.load_state_dict(widen_tail(old.state_dict(), wide), strict=True)
    assert wide.outc.weight.shape[1] == 9 and old.outc.weight.shape[1] == tail_width(ARCH) == 4
    x = torch.randn(2, 1, 16, 24, 24)
    getattr(old, mode)()
    getattr(wide, mode)()
    with torch.no_grad():
        a, b = old(x), wide(x)
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
    # The new channels are live: their features are not all zero, so training can move them.
    feats = {}
    wide.refine.register_forward_hook(lambda m, i, o: feats.__setitem__("r", o))
    with torch.no_grad():
        wide(x)
    assert float(feats["r"][:, 4:].abs().sum()) > 0


def test_widening_is_seeded_and_keeps_the_old_weights():
    old = _trained_like(ARCH, 1)
    wide = build_network(dict(ARCH, refine_channels=8))
    s1, s2 = widen_tail(old.state_dict(), wide, seed=3), widen_tail(old.state_dict(), wide, seed=3)
    s3 = widen_tail(old.state_dict(), wide, seed=4)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(s1["refine.0.weight"], s3["refine.0.weight"])
    for k, v in old.state_dict().items():
        assert torch.equal(s1[k][tuple(slice(0, n) for n in v.shape)], v), k
    assert float(s1["outc.weight"][:, 4:].abs().sum()) == 0.0


def test_only_a_wider_tail_of_a_stem2_network_counts():
    assert differs_only_in_tail_width(ARCH, dict(ARCH, refine_channels=16))
    assert not differs_only_in_tail_width(ARCH, dict(ARCH, refine_channels=2))          # narrower
    assert not differs_only_in_tail_width(ARCH, dict(ARCH, refine_channels=16, channels=[4, 8, 32]))
    assert not differs_only_in_tail_width(dict(ARCH, stem_stride=1), dict(ARCH, stem_stride=1, refine_channels=16))


def test_a_shape_change_outside_the_tail_is_refused():
    old = _trained_like(ARCH, 2)
    other = build_network(dict(ARCH, channels=[4, 8, 32], refine_channels=8))
    with pytest.raises(ValueError, match="outside the tail"):
        widen_tail(old.state_dict(), other)
