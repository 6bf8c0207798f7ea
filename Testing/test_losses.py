"""Losses of liverct_training.losses against torch references and hand-checkable cases."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from liverct_training.losses import bce, build_loss, cross_entropy, focal, soft_dice  # noqa: E402


def _data(shape=(2, 3, 4, 5, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g)
    target = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)
    return logits, target


@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 6), (3, 2, 8, 8)])
def test_cross_entropy_matches_torch(shape):
    logits, target = _data(shape)
    assert torch.allclose(cross_entropy(logits, target), F.cross_entropy(logits, target), atol=1e-6)
    w = [0.5, 2.0, 3.0][: shape[1]]
    ref = F.cross_entropy(logits, target, weight=torch.tensor(w))
    assert torch.allclose(cross_entropy(logits, target, w), ref, atol=1e-6)


def test_focal_gamma0_is_ce_and_gamma2_downweights_easy_voxels():
    logits, target = _data()
    assert torch.allclose(focal(logits, target, gamma=0.0), cross_entropy(logits, target), atol=1e-6)
    # Confident, correct predictions: focal loss is far below CE.
    easy = F.one_hot(target, 3).movedim(-1, 1).float() * 6.0
    assert focal(easy, target, gamma=2.0) < 0.01 * cross_entropy(easy, target)


def test_soft_dice_perfect_wrong_and_weights():
    _, target = _data()
    perfect = F.one_hot(target, 3).movedim(-1, 1).float() * 50.0
    assert soft_dice(perfect, target).item() < 1e-4
    wrong = F.one_hot((target + 1) % 3, 3).movedim(-1, 1).float() * 50.0
    assert soft_dice(wrong, target).item() > 0.99
    # Class 2 perfectly predicted, class 1 wrong: weighting class 2 up lowers the loss.
    mixed_t = torch.zeros(1, 4, 4, dtype=torch.long)
    mixed_t[0, :2] = 1
    mixed_t[0, 2:] = 2
    pred = torch.zeros(1, 3, 4, 4)
    pred[0, 0, :2] = 50.0  # class-1 voxels predicted background
    pred[0, 2, 2:] = 50.0
    assert abs(soft_dice(pred, mixed_t).item() - 0.5) < 1e-3
    assert soft_dice(pred, mixed_t, [1.0, 1.0, 3.0]).item() < 0.3


def test_bce_equals_sigmoid_of_logit_difference():
    logits, target = _data((2, 2, 6, 7))
    ref = F.binary_cross_entropy_with_logits(logits[:, 1] - logits[:, 0], target.float())
    assert torch.allclose(bce(logits, target), ref, atol=1e-6)
    w = bce(logits, target, [1.0, 4.0])
    assert not torch.allclose(w, ref)
    with pytest.raises(ValueError):
        bce(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


@pytest.mark.parametrize("name", ["ce", "dice", "dice_ce", "focal", "bce"])
def test_build_loss_gives_finite_gradients(name):
    logits, target = _data((2, 2, 4, 4, 4))
    logits.requires_grad_(True)
    loss = build_loss(name, [1.0, 2.0])(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_unknown_loss_and_bad_weights():
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("hinge")
    logits, target = _data()
    with pytest.raises(ValueError, match="class_weights"):
        cross_entropy(logits, target, [1.0, 2.0])
