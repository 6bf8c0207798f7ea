"""Real tumour shapes pasted as synthetic lesions (training/tumour_shapes.py, lesion_synth.py)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sitk = pytest.importorskip("SimpleITK")

from liverct_training.augment_torch import build_torch_augmentation  # noqa: E402
from liverct_training.datasets import DatasetError  # noqa: E402
from liverct_training.lesion_synth import add_lesions  # noqa: E402
from liverct_training.sampling import label_lut  # noqa: E402
from liverct_training import tumour_shapes  # noqa: E402
from liverct_training.tumour_shapes import TumourShapeBank  # noqa: E402

ANATOMY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "anatomy"


def _gen(seed: int) -> "torch.Generator":
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _write_map(folder: Path, name: str, arr: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    """A uint8 label map (array in k, j, i order) written as ``<name>_anatomy.nii.gz``."""
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing))
    path = folder / f"{name}_anatomy.nii.gz"
    sitk.WriteImage(img, str(path))
    return path


def _two_blob_map() -> np.ndarray:
    """Liver (1) with a 4x5x6 tumour (120 mm^3 at 1 mm) and a 3x3x3 one (27 mm^3, below 30)."""
    arr = np.zeros((30, 30, 30), np.uint8)
    arr[2:28, 2:28, 2:28] = 1
    arr[5:9, 5:10, 5:11] = 2
    arr[18:21, 18:21, 18:21] = 2
    return arr


def test_bank_keeps_components_above_the_size_threshold(tmp_path):
    _write_map(tmp_path, "a", _two_blob_map())
    bank = TumourShapeBank.from_folder(tmp_path, spacing=(1.0, 1.0, 1.0))
    assert len(bank) == 1, "the 27 mm^3 blob is below 30 mm^3"
    assert bank.shapes[0].dtype == bool and bank.shapes[0].shape == (4, 5, 6)
    assert int(bank.shapes[0].sum()) == 120
    # Diagonal neighbours are one component (26-connectivity).
    arr = np.zeros((20, 20, 20), np.uint8)
    arr[2:6, 2:6, 2:6] = 2
    arr[6:10, 6:10, 6:10] = 2
    _write_map(tmp_path / "b", "b", arr)
    assert len(TumourShapeBank.from_folder(tmp_path / "b", spacing=(1.0, 1.0, 1.0))) == 1


def test_shapes_are_resampled_to_the_stage_spacing(tmp_path):
    # Source 0.5 x 1 x 2 mm (i, j, k); a 12 x 6 x 3 voxel block = 6 mm on every axis.
    arr = np.zeros((10, 16, 24), np.uint8)
    arr[3:6, 4:10, 5:17] = 2
    _write_map(tmp_path, "a", arr, spacing=(0.5, 1.0, 2.0))
    bank = TumourShapeBank.from_folder(tmp_path, spacing=(1.5, 2.0, 3.0))
    assert len(bank) == 1 and bank.shapes[0].shape == (2, 3, 4)     # (k, j, i): 6/3, 6/2, 6/1.5
    assert bank.shapes[0].all()


def test_shapes_larger_than_the_patch_are_skipped(tmp_path):
    _write_map(tmp_path, "a", _two_blob_map())
    assert len(TumourShapeBank.from_folder(tmp_path, (1.0, 1.0, 1.0), max_extent=(8, 8, 8))) == 1
    with pytest.raises(DatasetError, match="no tumour shape"):
        TumourShapeBank.from_folder(tmp_path, (1.0, 1.0, 1.0), max_extent=(8, 8, 5))


def test_empty_folder_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="no \\*_anatomy.nii.gz"):
        TumourShapeBank.from_folder(tmp_path, spacing=(1.0, 1.0, 1.0))


def test_cache_is_reused_and_keyed_on_the_maps_and_spacing(tmp_path, monkeypatch):
    maps, cache = tmp_path / "maps", tmp_path / "cache"
    _write_map(maps, "a", _two_blob_map())
    first = TumourShapeBank.from_folder(maps, (1.0, 1.0, 1.0), cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1
    real_read = sitk.ReadImage

    def no_read(*a, **k):
        raise AssertionError("read a label map although the cache holds the bank")

    monkeypatch.setattr(sitk, "ReadImage", no_read)
    tumour_shapes._MEMO.clear()                                          # a fresh process: only the disk cache
    again = TumourShapeBank.from_folder(maps, (1.0, 1.0, 1.0), cache_dir=cache)
    assert len(again) == len(first) and all(np.array_equal(a, b) for a, b in zip(again.shapes, first.shapes))
    monkeypatch.setattr(sitk, "ReadImage", real_read)
    other = TumourShapeBank.from_folder(maps, (0.5, 1.0, 1.0), cache_dir=cache)   # new spacing: rebuilt
    assert other.shapes[0].shape == (4, 5, 12)
    assert len(list(cache.glob("*.npz"))) == 2
    _write_map(maps, "a", np.zeros((4, 4, 4), np.uint8))               # changed map: rebuilt, no shapes
    with pytest.raises(DatasetError, match="no tumour shape"):
        TumourShapeBank.from_folder(maps, (1.0, 1.0, 1.0), cache_dir=cache)


def _blob() -> np.ndarray:
    """An irregular, asymmetric 26-connected shape, so flips are visible."""
    m = np.zeros((5, 6, 7), bool)
    m[1:4, 1:5, 1:6] = True
    m[0, 0, 0:3] = True
    m[4, 5, 6] = True
    m[2, 2, 6] = True
    return m


def _flips(m: np.ndarray) -> list[np.ndarray]:
    out = []
    for code in range(8):
        axes = tuple(a for a in range(3) if code >> a & 1)
        out.append(np.flip(m, axes) if axes else m)
    return out


def test_pasted_shape_is_the_bank_shape_inside_a_large_liver():
    bank = TumourShapeBank([_blob()])
    shape = (40, 40, 40)
    target = torch.ones((6,) + shape, dtype=torch.long)                 # all liver
    image = torch.full((6, 1) + shape, 0.6)
    cfg = {"prob": 1.0, "max_count": 1, "shape_prob": 1.0, "hyper_prob": 0.0}
    x, y = add_lesions(image, target, _gen(3), cfg, (1.5, 1.5, 1.5), shapes=bank)
    whole = 0
    for s in range(6):
        idx = torch.nonzero(y[s] == 2)
        lo, hi = idx.min(0).values, idx.max(0).values
        assert int(idx.shape[0]) <= int(_blob().sum())
        if bool((lo > 0).all() and (hi < 39).all()):                      # not cut by the patch border
            whole += 1
            crop = (y[s] == 2)[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1].numpy()
            assert any(crop.shape == f.shape and np.array_equal(crop, f) for f in _flips(_blob()))
        assert float(x[s, 0][y[s] == 2].mean()) < 0.6 - 0.2, "hypodense lesion"
    assert whole >= 3


def test_pasted_shape_stays_inside_the_liver():
    big = np.ones((9, 9, 9), bool)
    bank = TumourShapeBank([big])
    target = torch.zeros((4, 24, 24, 24), dtype=torch.long)
    target[:, 6:18, 6:18, 6:18] = 1
    image = torch.where(target > 0, torch.tensor(0.6), torch.tensor(-1.5))[:, None].float()
    cfg = {"prob": 1.0, "max_count": 3, "shape_prob": 1.0}
    x, y = add_lesions(image, target, _gen(1), cfg, (1.5, 1.5, 1.5), shapes=bank)
    assert (y == 2).sum() > 0
    assert torch.all(target[y == 2] == 1), "a lesion left the liver"
    assert torch.equal(x[:, 0][target == 0], image[:, 0][target == 0]), "background changed"


def test_shape_prob_zero_draws_ellipsoids():
    bank = TumourShapeBank([np.ones((3, 3, 3), bool)])
    target = torch.ones((2, 24, 24, 24), dtype=torch.long)
    image = torch.full((2, 1, 24, 24, 24), 0.6)
    cfg = {"prob": 1.0, "max_count": 1, "shape_prob": 0.0, "radius_mm": (12.0, 12.5)}
    _, y = add_lesions(image, target, _gen(2), cfg, (1.5, 1.5, 1.5), shapes=bank)
    assert int((y == 2).sum(dim=(1, 2, 3)).min()) > 27, "a 12 mm ellipsoid, not the 3x3x3 shape"


def test_two_dimensional_patches_paste_a_slice():
    bank = TumourShapeBank([_blob()])
    target = torch.ones((2, 32, 32), dtype=torch.long)
    image = torch.full((2, 1, 32, 32), 0.6)
    cfg = {"prob": 1.0, "max_count": 1, "shape_prob": 1.0}
    _, y = add_lesions(image, target, _gen(0), cfg, (1.5, 1.5, 1.5), shapes=bank)
    per_sample = (y == 2).sum(dim=(1, 2))
    assert bool((per_sample > 0).all()) and int(per_sample.max()) <= int(_blob().sum(axis=(1, 2)).max())


# ---------------------------------------------------------------- unchanged without shapes
def _add_lesions_before_shapes(image, target, g, cfg, spacing, liver_class=1, tumor_class=2, clip=(-2.0, 2.0)):
    """Verbatim copy of lesion_synth.add_lesions before tumour shapes existed (commit bada9a4)."""
    import torch.nn.functional as F

    from liverct_training.lesion_synth import _grid
    from liverct_training.random_fields import _smooth_field, _u

    b, nd, dev = image.shape[0], image.dim() - 2, image.device
    shape = tuple(image.shape[2:])
    sp = torch.tensor([float(s) for s in spacing][::-1][-nd:], device=dev)
    prob, max_count = float(cfg.get("prob", 0.5)), int(cfg.get("max_count", 3))
    r_lo, r_hi = (float(v) for v in cfg.get("radius_mm", (4.0, 20.0)))
    coords = torch.stack(_grid(shape, dev), 0)
    image, target = image.clone(), target.clone()
    for s in range(b):
        liver = target[s] == liver_class
        n_liver = int(liver.sum())
        if n_liver < 50 or float(torch.rand(1, generator=g, device=dev)) >= prob:
            continue
        inside = image[s, 0][liver]
        base = float(inside.mean())
        count = 1 + int(torch.randint(max_count, (1,), generator=g, device=dev))
        flat = torch.nonzero(liver.reshape(-1)).squeeze(1)
        for _ in range(count):
            centre_idx = flat[torch.randint(flat.numel(), (1,), generator=g, device=dev)]
            centre = torch.stack(torch.unravel_index(centre_idx, shape), 0).float().reshape(nd, *(1,) * nd)
            radius = math.exp(float(_u(g, 1, math.log(r_lo), math.log(r_hi), dev)))
            axes_mm = radius * _u(g, nd, 0.7, 1.3, dev)
            d2 = (((coords - centre) * sp.view(nd, *(1,) * nd)) / axes_mm.view(nd, *(1,) * nd)) ** 2
            dist = d2.sum(0).sqrt()
            dist = dist + 0.25 * _smooth_field(g, 1, shape, 6, dev)[0, 0]
            rim = max(0.05, 1.0 / max(radius, 1.0))
            weight = torch.sigmoid((1.0 - dist) / rim) * liver
            if float(weight.sum()) < 1.0:
                continue
            hyper = float(torch.rand(1, generator=g, device=dev)) < float(cfg.get("hyper_prob", 0.2))
            contrast = float(_u(g, 1, 0.3, 0.8, dev)) if hyper else -float(_u(g, 1, 0.3, 1.2, dev))
            texture = float(_u(g, 1, 0.0, 0.15, dev)) * torch.randn(shape, generator=g, device=dev)
            if nd == 3:
                texture = F.avg_pool3d(texture[None, None], 3, 1, 1)[0, 0]
            lesion_value = base + contrast + texture
            image[s, 0] = image[s, 0] * (1 - weight) + lesion_value * weight
            target[s][(weight > 0.5) & liver] = tumor_class
    return image.clamp_(float(clip[0]), float(clip[1])), target


@pytest.mark.parametrize("shape", [(20, 24, 28), (28, 32)])
def test_without_shapes_output_and_draws_are_unchanged(shape):
    target = torch.zeros((3,) + shape, dtype=torch.long)
    target[(slice(None),) + tuple(slice(3, s - 3) for s in shape)] = 1
    target[0] = 0                                                        # a sample without liver
    image = (torch.randn((3, 1) + shape, generator=_gen(9)) * 0.2 + 0.5).clamp(-2, 2)
    cfg = {"prob": 0.8, "max_count": 3, "radius_mm": (3.0, 12.0), "hyper_prob": 0.3, "shape_prob": 0.9}
    g_new, g_old = _gen(11), _gen(11)
    x, y = add_lesions(image, target, g_new, cfg, (1.5, 1.5, 2.0), shapes=None)
    x0, y0 = _add_lesions_before_shapes(image, target, g_old, cfg, (1.5, 1.5, 2.0))
    assert (y0 == 2).any()
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert torch.equal(g_new.get_state(), g_old.get_state()), "no extra random draws"


# ---------------------------------------------------------------- config wiring
def test_augmenter_builds_the_bank_only_when_configured(tmp_path):
    _write_map(tmp_path, "a", _two_blob_map())
    lut = label_lut([0, 1, 2], any_nonzero_is_foreground=False)
    les = {"enabled": True, "prob": 1.0}
    plain = build_torch_augmentation({"enabled": False}, (16, 16, 16), lut, lesions=les, tumor_class=2)
    assert plain.shapes is None
    aug = build_torch_augmentation({"enabled": False}, (16, 16, 16), lut, tumor_class=2,
                                   lesions=dict(les, shapes=str(tmp_path), shape_prob=1.0, max_count=1),
                                   spacing=(1.0, 1.0, 1.0))
    assert aug.shapes is not None and len(aug.shapes) == 1
    raw = torch.ones((1, 16, 16, 16), dtype=torch.uint8)
    _, y = aug(torch.full((1, 1, 16, 16, 16), 0.5), raw, _gen(0))
    assert 0 < int((y == 2).sum()) <= 120


def test_real_anatomy_folder_holds_many_shapes(tmp_path):
    if not any(ANATOMY.glob("*_anatomy.nii.gz")):
        pytest.skip(f"anatomy maps not found at {ANATOMY}")
    bank = TumourShapeBank.from_folder(ANATOMY, (1.5, 1.5, 1.5), max_extent=(96, 128, 128))
    assert len(bank) > 10
    vox = 1.5 ** 3
    assert all(s.dtype == bool and s.ndim == 3 and s.any() for s in bank.shapes)
    assert max(int(s.sum()) for s in bank.shapes) * vox > 100_000          # p06's ~350 mL tumour
    assert max(s.shape[0] for s in bank.shapes) <= 96
