"""engine.fast_unet: the float32 CPU executor gives the network's own logits (and so its labels).

Random weights with randomised batch-norm statistics, so folding errors cannot hide behind
identity norms; odd channel counts, both stems, batch of two.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from LiverCTSegmentationLib.engine import fast_unet  # noqa: E402
from LiverCTSegmentationLib.engine.networks import build_network  # noqa: E402


def _net(seed: int = 0, **arch):
    torch.manual_seed(seed)
    net = build_network({"name": "reduced_unet3d", "out_channels": 3, "channels": [5, 7, 11], "norm": "batch",
                         **arch})
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return net.eval()


@pytest.mark.parametrize("arch", [{"stem_stride": 2}, {"stem_stride": 1}, {"stem_stride": 2, "norm": "none"},
                                  {"stem_stride": 2, "channels": [4, 8, 16, 32], "refine_channels": 3}])
def test_logits_match_the_module(arch) -> None:
    net = _net(**arch)
    d = 2 ** (len(arch.get("channels", [5, 7, 11])) - 1) * arch["stem_stride"]
    x = torch.randn(2, 1, 2 * d, 3 * d, d)
    with torch.inference_mode():
        ref = net(x)
        got = fast_unet.FastUNet(net)(x.contiguous(memory_format=torch.channels_last_3d))
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


@pytest.mark.parametrize("slab_voxels", [1, 6 * 16 * 24, 10**9])
def test_full_resolution_tail_in_slabs_is_exact(slab_voxels) -> None:
    """Slabs of 2 rows, of 6 rows (the last one short), one slab: same logits as the module."""
    net = _net(stem_stride=2)
    x = torch.randn(1, 1, 40, 16, 24).contiguous(memory_format=torch.channels_last_3d)
    run = fast_unet.FastUNet(net)
    run.tail_slab_voxels = slab_voxels
    with torch.inference_mode():
        ref = net(x)
        got = run(x)
    assert float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


def test_only_networks_it_reproduces_are_accepted() -> None:
    assert fast_unet.supports(_net())
    assert not fast_unet.supports(_net(norm="instance"))
    assert not fast_unet.supports(_net().train())
    assert not fast_unet.supports(build_network({"name": "unet2d", "out_channels": 2, "channels": [4, 8]}).eval())
    assert not fast_unet.supports(build_network({"name": "threshold_net", "out_channels": 2}).eval())
    assert fast_unet.cpu_executor(_net(), "cpu", bf16=True) is None  # native bf16 keeps torch autocast


def test_cached_executor_follows_weight_changes() -> None:
    net = _net()
    first = fast_unet.fast_network(net)
    assert fast_unet.fast_network(net) is first
    with torch.no_grad():
        net.outc.bias.add_(5.0)  # e.g. a training step between two validations
    second = fast_unet.fast_network(net)
    assert second is not first
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        assert torch.allclose(second(x), net(x), atol=1e-4)


def test_environment_switch_turns_it_off(monkeypatch) -> None:
    monkeypatch.setenv("LIVERCT_FAST_UNET", "0")
    assert fast_unet.cpu_executor(_net(), "cpu", bf16=False) is None
    monkeypatch.setenv("LIVERCT_FAST_UNET", "1")
    assert fast_unet.cpu_executor(_net(), "cpu", bf16=False) is not None


def test_sliding_window_with_the_executor_gives_the_same_labels() -> None:
    from LiverCTSegmentationLib.engine.inference import sliding_window_predict

    net = _net(stem_stride=2)
    img = np.random.default_rng(1).normal(size=(20, 37, 29)).astype(np.float32)
    run = fast_unet.fast_network(net)
    for budget in (10**6, 24 * 24 * 24):  # one window; enlarged blended windows
        ref = sliding_window_predict(net, img, (16, 16, 16), 3, max_window_voxels=budget, divisor=8)
        got = sliding_window_predict(net, img, (16, 16, 16), 3, max_window_voxels=budget, divisor=8, executor=run)
        assert (got == ref).mean() > 0.999
