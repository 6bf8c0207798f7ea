"""The per-class soft recall that exposes a class the network never learns (training/class_monitor.py)."""
from __future__ import annotations

import pytest
import torch

from liverct_training import train as T
from liverct_training.class_monitor import SoftRecall, unlearned


def _target() -> torch.Tensor:
    y = torch.zeros(2, 4, 6, 6, dtype=torch.long)
    y[:, 1:3, 1:5, 1:5] = 1
    y[:, 2, 2:4, 2:4] = 2
    return y


def _logits(y: torch.Tensor, tumour: bool) -> torch.Tensor:
    z = torch.nn.functional.one_hot(y, 3).movedim(-1, 1).float() * 6.0
    if not tumour:  # a collapsed channel: the tumour never wins, its voxels look like liver
        z[:, 2] = -6.0
        z[:, 1] += 6.0 * (y == 2).float()
    return z


def test_soft_recall_separates_a_learned_from_a_collapsed_class():
    y = _target()
    good, bad = SoftRecall(3), SoftRecall(3)
    good.update(_logits(y, True), y)
    bad.update(_logits(y, False), y)
    g, b = good.values(), bad.values()
    assert min(g.values()) > 0.98
    assert b[0] > 0.98 and b[1] > 0.98 and b[2] < 0.01
    names = ["background", "liver", "tumor"]
    assert unlearned(g, names) == [] and unlearned(b, names) == ["tumor"]


def test_a_class_absent_from_the_targets_is_neither_scored_nor_flagged():
    y = torch.zeros(1, 3, 4, 4, dtype=torch.long)
    y[0, 1] = 1
    r = SoftRecall(3)
    r.update(torch.zeros(1, 3, 3, 4, 4), y)   # uniform: 1/3 everywhere
    assert set(r.values()) == {0, 1} and r.values()[1] == pytest.approx(1 / 3)
    assert unlearned(r.values(), ["background", "liver", "tumor"]) == []   # 1/3 is above the 0.25 line
    assert unlearned(r.values(), ["background", "liver", "tumor"], below=0.5) == ["liver"]
    r.reset()
    assert r.values() == {}


def test_values_above_the_channels_count_as_foreground_as_bce_does():
    y = _target()                                  # values 0, 1, 2 against two channels
    r = SoftRecall(2)
    r.update(torch.zeros(2, 2, 4, 6, 6), y)
    assert int(r.count[1]) == int((y > 0).sum()) and r.values()[1] == pytest.approx(0.5)


def test_train_step_feeds_the_monitor_from_its_own_logits():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    y = _target()
    x = y[:, None].float()
    r = SoftRecall(3)
    T.train_step(net, lambda z, t: torch.nn.functional.cross_entropy(z, t), opt, x, y, None, None, r)
    with torch.no_grad():
        p = torch.softmax(net(x), 1)
    assert r.values()[2] == pytest.approx(float(p[:, 2][y == 2].mean()), rel=1e-5)
    assert int(r.count.sum()) == y.numel()


def test_stage_class_names_follow_the_task():
    fine = {"architecture": {"out_channels": 3}, "class_to_label": [0, 1, 2]}
    assert T.stage_class_names(fine, "liver_tumor") == ["background", "liver", "tumor"]
    coarse = {"architecture": {"out_channels": 2}, "class_to_label": [0, 1]}
    assert T.stage_class_names(coarse, "liver_tumor") == ["background", "liver"]
