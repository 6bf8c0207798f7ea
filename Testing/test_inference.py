"""Sliding window: exact class maps with a pointwise net, Gaussian weights, cancellation."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from LiverCTSegmentationLib.engine.errors import Cancelled
from LiverCTSegmentationLib.engine.inference import (
    compare_argmax, gaussian_importance, sliding_window_predict, window_starts)
from LiverCTSegmentationLib.engine.progress import Progress


class ClassOfValue(torch.nn.Module):
    """Identity-like: the input value v in {0..C-1} is the class; logits = -10 (x - c)^2."""

    def __init__(self, n: int, dims: int = 3):
        super().__init__()
        self.register_buffer("c", torch.arange(n, dtype=torch.float32))
        self.dims = dims

    def forward(self, x):
        shape = (1, -1) + (1,) * self.dims
        return -10.0 * (x - self.c.view(shape)) ** 2


def _labels(shape, n=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=shape).astype(np.uint8)


@pytest.mark.parametrize("shape", [(40, 37, 53), (16, 20, 24), (7, 33, 5), (1, 1, 1)])
@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_identity_like_net_gives_exact_map(shape, overlap):
    lab = _labels(shape)
    out = sliding_window_predict(ClassOfValue(3), lab.astype(np.float32), (16, 16, 16), 3,
                                 overlap=overlap, batch_size=3, device="cpu")
    assert out.dtype == np.uint8 and out.shape == lab.shape
    np.testing.assert_array_equal(out, lab)


def test_bf16_path_runs_and_matches_for_clear_classes():
    lab = _labels((20, 20, 20))
    out = sliding_window_predict(ClassOfValue(3), lab.astype(np.float32), (16, 16, 16), 3, bf16=True)
    np.testing.assert_array_equal(out, lab)


def test_2d_network_slicewise():
    lab = _labels((5, 30, 19))
    out = sliding_window_predict(ClassOfValue(3, dims=2), lab.astype(np.float32), (1, 16, 16), 3,
                                 spatial_dims=2)
    np.testing.assert_array_equal(out, lab)


def test_window_starts_cover_everything():
    for size in range(16, 100, 7):
        for ov in (0.0, 0.25, 0.5):
            s = window_starts(size, 16, ov)
            assert s[0] == 0 and s[-1] == size - 16
            assert all(b - a <= 16 for a, b in zip(s, s[1:]))


def test_gaussian_weights_symmetric_positive():
    g = gaussian_importance((16, 24, 9))
    assert g.shape == (16, 24, 9) and (g > 0).all() and g.max() == pytest.approx(1.0)
    for ax in range(3):
        np.testing.assert_allclose(g, np.flip(g, axis=ax), rtol=1e-6)
    # centre heavier than corner, sigma = patch / 8
    assert g[8, 12, 4] > 10 * g[0, 0, 0]


def _gaussian_reference(patch, sigma_scale=1.0 / 8):
    """The weights as first written: the float64 3D product, normalised, floored, cast."""
    grids = []
    for p in patch:
        x = np.arange(p, dtype=np.float64)
        grids.append(np.exp(-0.5 * ((x - (p - 1) / 2.0) / max(p * sigma_scale, 1e-6)) ** 2))
    g = grids[0][:, None, None] * grids[1][None, :, None] * grids[2][None, None, :]
    g /= g.max()
    return np.maximum(g, max(g[g > 0].min(), 1e-6)).astype(np.float32)


@pytest.mark.parametrize("patch", [(128, 144, 128), (112, 144, 144), (16, 24, 9), (1, 64, 64), (7, 5, 3),
                                   (3, 3, 3)])
@pytest.mark.parametrize("sigma_scale", [1.0 / 8, 1.0 / 2])
def test_separable_gaussian_is_bit_identical_to_the_3d_product(patch, sigma_scale):
    g = gaussian_importance(patch, sigma_scale)
    assert g.dtype == np.float32
    np.testing.assert_array_equal(g, _gaussian_reference(patch, sigma_scale))


def test_compare_argmax_equals_argmax():
    x = torch.randn(4, 9, 10, 11)
    assert torch.equal(compare_argmax(x).long(), x.argmax(0))


def test_cancel_before_and_during():
    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled):
        sliding_window_predict(ClassOfValue(2), np.zeros((40, 40, 40), np.float32), (16, 16, 16), 2,
                               progress=Progress(None, ev))
    ev = threading.Event()
    calls = []

    def cb(f, stage):
        calls.append(f)
        if len(calls) == 2:
            ev.set()

    with pytest.raises(Cancelled):
        sliding_window_predict(ClassOfValue(2), np.zeros((40, 40, 40), np.float32), (16, 16, 16), 2,
                               batch_size=1, progress=Progress(cb, ev))
    assert len(calls) == 2  # stopped right after the batch during which cancel was requested


class CountingNet(ClassOfValue):
    """ClassOfValue that records the spatial shape of every batch it sees."""

    def __init__(self, n: int):
        super().__init__(n)
        self.calls: list = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return super().forward(x)


@pytest.mark.parametrize("shape", [(40, 37, 53), (7, 33, 5)])
def test_single_window_is_one_pass_padded_to_divisor_and_exact(shape):
    lab = _labels(shape)
    net = CountingNet(3)
    out = sliding_window_predict(net, lab.astype(np.float32), (16, 16, 16), 3, max_window_voxels=10**6, divisor=8)
    np.testing.assert_array_equal(out, lab)
    assert len(net.calls) == 1
    padded = net.calls[0][2:]
    assert all(p % 8 == 0 and p >= max(s, 16) and p - max(s, 16) < 8 for p, s in zip(padded, shape))


def test_region_over_budget_uses_few_enlarged_windows_and_stays_exact():
    lab = _labels((64, 40, 72))
    net = CountingNet(3)
    budget = 40 * 40 * 48
    out = sliding_window_predict(net, lab.astype(np.float32), (16, 16, 16), 3, overlap=0.5,
                                 max_window_voxels=budget, divisor=8)
    np.testing.assert_array_equal(out, lab)
    tiled = CountingNet(3)
    sliding_window_predict(tiled, lab.astype(np.float32), (16, 16, 16), 3, overlap=0.5, batch_size=1)
    assert 1 < len(net.calls) < len(tiled.calls) // 10
    for c in net.calls:
        assert c[0] == 1 and int(np.prod(c[2:])) <= budget and all(s % 8 == 0 for s in c[2:])


def test_enlarged_window_bounds():
    from LiverCTSegmentationLib.engine.inference import enlarged_window

    assert enlarged_window((176, 144, 176), (96, 96, 96), 16, 10**9) == (176, 144, 176)
    for budget in (10**5, 10**6, 2 * 10**6, 4 * 10**6):
        w = enlarged_window((176, 144, 176), (96, 96, 96), 16, budget)
        assert all(s % 16 == 0 and 96 <= s <= m for s, m in zip(w, (176, 144, 176)))
        assert int(np.prod(w)) <= budget or w == (96, 96, 96)
