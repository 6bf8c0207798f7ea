"""On-device batch augmentation (training/augment_torch.py) and synthetic lesions (lesion_synth.py)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from liverct_training.augment_torch import build_torch_augmentation  # noqa: E402
from liverct_training.lesion_synth import add_lesions  # noqa: E402
from liverct_training.sampling import label_lut  # noqa: E402

PATCH = (16, 20, 24)
FULL = {"enabled": True, "context": 1.25, "rotate_deg": 15, "scale": 0.15, "affine_prob": 1.0,
        "elastic_prob": 1.0, "intensity_prob": 1.0, "gamma_prob": 1.0, "bias_prob": 1.0,
        "noise_prob": 1.0, "lowres_prob": 1.0, "organ_prob": 1.0}


def _gen(seed: int) -> "torch.Generator":
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _batch(aug, b: int = 3):
    """Image crops with a liver block (label 1), a tumour (2) and a 'spleen' organ (5)."""
    crop = aug.crop
    raw = torch.zeros((b,) + crop, dtype=torch.uint8)
    k, j, i = (c // 2 for c in crop)
    raw[:, k - 5:k + 5, j - 6:j + 6, i - 8:i] = 1
    raw[:, k - 2:k + 2, j - 2:j + 2, i - 6:i - 3] = 2
    raw[:, k - 4:k + 4, j - 4:j + 4, i + 2:i + 8] = 5
    image = torch.where(raw > 0, torch.tensor(0.5), torch.tensor(-1.0))[:, None].half()
    return image, raw


def test_disabled_augmentation_is_an_exact_centre_crop_with_class_mapping():
    lut = label_lut([0, 1, 2], any_nonzero_is_foreground=False)
    aug = build_torch_augmentation({"enabled": False}, PATCH, lut)
    assert aug.crop == PATCH
    image, raw = _batch(aug)
    x, y = aug(image, raw, _gen(0))
    assert x.shape == (3, 1) + PATCH and y.shape == (3,) + PATCH
    assert torch.equal(x, image.float())
    assert torch.equal(y, torch.as_tensor(lut)[raw.long()])   # organ 5 -> background, 1 -> 1, 2 -> 2


def test_context_crop_is_larger_and_identity_warp_hits_the_centre():
    lut = label_lut([0, 1], any_nonzero_is_foreground=True)
    aug = build_torch_augmentation({"enabled": True, "context": 1.5}, PATCH, lut)
    assert all(c > p and (c - p) % 2 == 0 for c, p in zip(aug.crop, PATCH))
    image, raw = _batch(aug)
    x, y = aug(image, raw, _gen(0))
    lo = [(c - p) // 2 for c, p in zip(aug.crop, PATCH)]
    centre = tuple(slice(a, a + p) for a, p in zip(lo, PATCH))
    assert torch.allclose(x[:, 0], image[(slice(None), 0) + centre].float(), atol=1e-5)
    # Coarse mapping: liver and tumour are the liver region, the neighbouring organ is not.
    assert set(torch.unique(y).tolist()) == {0, 1}
    assert torch.equal(y, (torch.isin(raw[(slice(None),) + centre], torch.tensor([1, 2]))).long())


def test_same_generator_same_batch_other_seed_differs():
    lut = label_lut([0, 1, 2], any_nonzero_is_foreground=False)
    aug = build_torch_augmentation(FULL, PATCH, lut)
    image, raw = _batch(aug)
    a = aug(image, raw, _gen(1))
    b = aug(image, raw, _gen(1))
    c = aug(image, raw, _gen(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (3, 1) + PATCH and set(torch.unique(a[1]).tolist()) <= {0, 1, 2}


def test_organ_shift_moves_organs_and_liver_but_not_background():
    lut = label_lut([0, 1, 2], any_nonzero_is_foreground=False)
    aug = build_torch_augmentation({"enabled": True, "context": 1.0, "organ_prob": 1.0, "organ_shift": 0.8,
                                    "liver_shift": 0.4}, PATCH, lut)
    image, raw = _batch(aug, b=4)
    x, _ = aug(image, raw, _gen(3))
    delta = x[:, 0] - image[:, 0].float()
    assert torch.all(delta[raw == 0] == 0)
    organ = torch.stack([delta[s][raw[s] == 5].unique() for s in range(4)])
    liver = torch.stack([delta[s][raw[s] == 1].unique() for s in range(4)])
    assert organ.shape == (4, 1) and liver.shape == (4, 1)          # one shift per organ and sample
    assert (organ.abs() <= 0.8 + 1e-6).all() and (liver.abs() <= 0.4 + 1e-6).all()
    assert len(set(organ.flatten().tolist())) == 4                 # independent per sample
    assert torch.equal(delta[raw == 2], delta[raw == 2])            # tumour follows the liver shift
    for s in range(4):
        assert torch.allclose(delta[s][raw[s] == 2], liver[s].expand((raw[s] == 2).sum()))


def test_synthetic_lesions_stay_inside_the_liver_and_get_the_tumour_class():
    b, shape = 2, (24, 32, 32)
    target = torch.zeros((b,) + shape, dtype=torch.long)
    target[:, 4:20, 6:26, 6:26] = 1
    image = torch.where(target > 0, torch.tensor(0.6), torch.tensor(-1.5))[:, None].float()
    cfg = {"prob": 1.0, "max_count": 3, "radius_mm": (4.0, 8.0), "hyper_prob": 0.0}
    x, y = add_lesions(image, target, _gen(5), cfg, spacing=(1.5, 1.5, 1.5))
    assert (y == 2).sum() > 0
    assert torch.all(target[y == 2] == 1), "a lesion left the liver"
    assert torch.equal(x[:, 0][target == 0], image[:, 0][target == 0]), "background changed"
    assert x[:, 0][y == 2].mean() < 0.6 - 0.2, "hypodense lesions are darker than the liver"
    x2, y2 = add_lesions(image, target, _gen(5), cfg, spacing=(1.5, 1.5, 1.5))
    assert torch.equal(y, y2) and torch.equal(x, x2)


def test_no_liver_no_lesion():
    target = torch.zeros((1, 16, 16, 16), dtype=torch.long)
    image = torch.zeros((1, 1, 16, 16, 16))
    x, y = add_lesions(image, target, _gen(0), {"prob": 1.0}, spacing=(1.0, 1.0, 1.0))
    assert torch.equal(x, image) and not (y == 2).any()


def test_two_dimensional_patches():
    lut = label_lut([0, 1], any_nonzero_is_foreground=False)
    aug = build_torch_augmentation(dict(FULL, organ_prob=0.0), (32, 48), lut)
    raw = torch.zeros((2,) + aug.crop, dtype=torch.uint8)
    raw[:, 10:30, 10:40] = 1
    x, y = aug(torch.zeros((2, 1) + aug.crop), raw, _gen(0))
    assert x.shape == (2, 1, 32, 48) and y.shape == (2, 32, 48) and (y == 1).any()
    assert np.isfinite(x.numpy()).all()
