"""CT-like images synthesised from a real patient's anatomy label map (SynthSeg-style).

An expert label map (liver, tumours, vessels, bone, organs, body outline) carries the real
shape, position and neighbours of a liver; what it lacks is the image. This module draws one:
per class an intensity from a CT-like range (contrast phase drawn per image, so vessels,
kidneys and spleen brighten together as in a real portal-venous scan), low-frequency texture,
a heterogeneous body (subcutaneous and visceral fat, muscle, bowel with gas) instead of one
flat value for the unlabelled body, bone with a cortical rim, then a scanner-like blur and
noise. The labels are not touched: image and labels share the grid, voxel for voxel.

Deterministic for a seed; tissue ranges by class *name* (``TISSUES``), so any label map with
a classes table can be used. Used by ``training/anatomy_data.py``; the engine never imports it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from ..engine.volume import Volume

# name -> (unenhanced HU range, enhancement range at full portal-venous contrast, texture scale 0..1)
TISSUES: dict[str, tuple[tuple[float, float], tuple[float, float], float]] = {
    "outside_body": ((-1010.0, -990.0), (0.0, 0.0), 0.0),
    "liver": ((45.0, 65.0), (45.0, 90.0), 0.6),
    "liver_vessel": ((35.0, 48.0), (90.0, 160.0), 0.3),  # like the portal vein it belongs to
    "liver_cyst": ((0.0, 15.0), (0.0, 5.0), 0.2),
    "portal_vein": ((35.0, 48.0), (90.0, 160.0), 0.3),
    "vena_cava": ((35.0, 48.0), (50.0, 130.0), 0.3),
    "venous_system": ((35.0, 48.0), (50.0, 130.0), 0.3),
    "artery": ((35.0, 50.0), (100.0, 250.0), 0.3),
    "gallbladder": ((0.0, 20.0), (0.0, 0.0), 0.2),
    "biliary_system": ((0.0, 25.0), (0.0, 10.0), 0.2),
    "kidney": ((25.0, 40.0), (80.0, 180.0), 0.6),
    "spleen": ((40.0, 55.0), (55.0, 110.0), 0.5),
    "pancreas": ((35.0, 50.0), (35.0, 80.0), 0.8),
    "adrenal_gland": ((25.0, 40.0), (15.0, 60.0), 0.6),
    "stomach": ((10.0, 40.0), (0.0, 40.0), 1.0),
    "lung": ((-900.0, -780.0), (0.0, 0.0), 0.5),
    # blood pool and myocardium as one: up to ~250 HU at full contrast (arterial-like), 30-70 unenhanced
    "heart": ((30.0, 50.0), (90.0, 200.0), 0.3),
    "mediastinum": ((-110.0, -60.0), (0.0, 10.0), 0.8),  # fat with strands of soft tissue
    "metal_or_stone": ((800.0, 2500.0), (0.0, 0.0), 0.0),
}
SOFT_TISSUE = ((30.0, 60.0), (10.0, 50.0), 0.6)  # a class this table does not name
FAT = (-120.0, -80.0)
MUSCLE = (35.0, 60.0)
BOWEL = (10.0, 45.0)
GAS = (-1000.0, -750.0)
BONE_CANCELLOUS = (150.0, 350.0)
BONE_CORTICAL = (500.0, 1100.0)
TUMOR_HYPO = (-70.0, -15.0)  # relative to the liver: most metastases and HCC in portal phase
TUMOR_HYPER = (15.0, 50.0)


@dataclass(frozen=True)
class SynthesisParams:
    grid_mm: float = 1.5  # images are drawn on this grid (the fine stage's); labels resampled to it
    contrast_prob: float = 0.8  # else an unenhanced scan
    hyper_tumor_prob: float = 0.25
    texture_hu: tuple[float, float] = (4.0, 14.0)
    blur_mm: tuple[float, float] = (0.4, 1.2)  # Gaussian sigma of the scanner's point spread
    noise_hu: tuple[float, float] = (5.0, 25.0)
    subcutaneous_fat_mm: tuple[float, float] = (6.0, 30.0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], spacing_kji: np.ndarray,
                  scale_mm: float) -> np.ndarray:
    """Zero-mean, unit-variance noise correlated over ``scale_mm`` (drawn coarse, upsampled)."""
    from scipy.ndimage import gaussian_filter, zoom

    step = np.maximum(1, np.floor(scale_mm / 2.0 / spacing_kji)).astype(int)
    small = tuple(int(np.ceil(n / s)) + 1 for n, s in zip(shape, step))
    field = gaussian_filter(rng.standard_normal(small).astype(np.float32),
                            sigma=tuple(scale_mm / (sp * st) for sp, st in zip(spacing_kji, step)))
    field = zoom(field, [n / m for n, m in zip(shape, small)], order=1, grid_mode=True, mode="grid-constant")
    field = field[tuple(slice(0, n) for n in shape)]
    std = float(field.std()) or 1.0
    return (field - field.mean()) / std


def _depth_mm(body: np.ndarray, spacing_kji: np.ndarray) -> np.ndarray:
    """Distance (mm) from each body voxel to the outside, computed on a 4 mm grid."""
    from scipy.ndimage import distance_transform_edt, zoom

    step = np.maximum(1, np.round(4.0 / spacing_kji)).astype(int)
    small = body[::step[0], ::step[1], ::step[2]]
    depth = distance_transform_edt(np.pad(small, 1), sampling=spacing_kji * step)[1:-1, 1:-1, 1:-1]
    up = zoom(depth.astype(np.float32), [n / m for n, m in zip(body.shape, small.shape)], order=1, grid_mode=True,
              mode="nearest")
    return up[tuple(slice(0, n) for n in body.shape)]


def _bone(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cancellous inside, a cortical rim one voxel thick."""
    from scipy.ndimage import binary_erosion

    inner = binary_erosion(mask, iterations=1)
    out = np.full(mask.shape, rng.uniform(*BONE_CANCELLOUS), np.float32)
    out[mask & ~inner] = rng.uniform(*BONE_CORTICAL)
    return out


def synthesize_ct(labels: np.ndarray, names: Mapping[int, str], spacing_ijk, seed: int,
                  params: SynthesisParams = SynthesisParams()) -> np.ndarray:
    """An int16 HU image for ``labels`` (KJI array of class values named by ``names``)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    spacing = np.asarray(spacing_ijk, float)[::-1]  # k, j, i
    shape = labels.shape
    contrast = float(rng.uniform(0.6, 1.0)) if rng.random() < params.contrast_prob else float(rng.uniform(0, 0.1))
    texture = _smooth_noise(rng, shape, spacing, float(rng.uniform(2.0, 6.0)))
    image = np.full(shape, -1000.0, np.float32)
    liver_hu = None
    for value in np.unique(labels):
        name = names.get(int(value), "")
        if name in ("body_unlabelled", "bone", "liver_tumor"):
            continue  # drawn below: they need more than one value
        (lo, hi), (elo, ehi), tex = TISSUES.get(name, SOFT_TISSUE)
        hu = rng.uniform(lo, hi) + contrast * rng.uniform(elo, ehi)
        if name == "liver":
            liver_hu = hu
        mask = labels == value
        image[mask] = hu + tex * rng.uniform(*params.texture_hu) * texture[mask]
    if liver_hu is None:
        (lo, hi), (elo, ehi), _ = TISSUES["liver"]
        liver_hu = rng.uniform(lo, hi) + contrast * rng.uniform(elo, ehi)
    by_name = {n: v for v, n in names.items()}

    if "body_unlabelled" in by_name:
        body_rest = labels == by_name["body_unlabelled"]
        depth = _depth_mm(labels != by_name.get("outside_body", 0), spacing)
        layout = _smooth_noise(rng, shape, spacing, float(rng.uniform(12.0, 30.0)))
        gas = _smooth_noise(rng, shape, spacing, float(rng.uniform(3.0, 8.0)))
        q_fat, q_bowel = np.quantile(layout[body_rest], [rng.uniform(0.25, 0.5), rng.uniform(0.6, 0.85)]) \
            if body_rest.any() else (0.0, 1.0)
        fat = body_rest & ((depth < rng.uniform(*params.subcutaneous_fat_mm)) | (layout < q_fat))
        bowel = body_rest & ~fat & (layout > q_bowel)
        muscle = body_rest & ~fat & ~bowel
        for mask, rng_hu in ((fat, FAT), (muscle, MUSCLE), (bowel, BOWEL)):
            image[mask] = rng.uniform(*rng_hu) + rng.uniform(*params.texture_hu) * texture[mask]
        image[bowel & (gas > rng.uniform(1.6, 2.4))] = rng.uniform(*GAS)
    if "bone" in by_name:
        bone = labels == by_name["bone"]
        image[bone] = _bone(bone, rng)[bone] + 20.0 * texture[bone]
    if "liver_tumor" in by_name:
        tumor = labels == by_name["liver_tumor"]
        delta = rng.uniform(*(TUMOR_HYPER if rng.random() < params.hyper_tumor_prob else TUMOR_HYPO))
        image[tumor] = liver_hu + delta + rng.uniform(*params.texture_hu) * texture[tumor]

    blur = float(rng.uniform(*params.blur_mm))
    image = gaussian_filter(image, sigma=tuple(blur / s for s in spacing))
    noise = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=0.5)
    noise *= float(rng.uniform(*params.noise_hu)) / (float(noise.std()) or 1.0)
    image += noise
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


def labels_on_grid(anatomy: Volume, params: SynthesisParams = SynthesisParams()) -> Volume:
    """The uint8 label map on the synthesis grid (axes finer than ``params.grid_mm`` resampled, nearest)."""
    from ..engine.preprocess import resample_to_spacing

    grid = tuple(max(float(s), params.grid_mm) for s in anatomy.spacing)
    labels = anatomy if np.allclose(grid, anatomy.spacing) else resample_to_spacing(anatomy, grid, "nearest")
    return labels.with_array(np.asarray(labels.array, dtype=np.uint8))


def synthesize_volume(anatomy: Volume, names: Mapping[int, str], seed: int,
                      params: SynthesisParams = SynthesisParams()) -> tuple[Volume, Volume]:
    """(CT, labels) on one grid of ``params.grid_mm``: the anatomy resampled (nearest), then drawn."""
    labels = labels_on_grid(anatomy, params)
    ct = synthesize_ct(labels.array, names, labels.spacing, seed, params)
    return labels.with_array(ct), labels


def class_names(classes_json: Mapping) -> dict[int, str]:
    """{value: name} from an anatomy classes table (``{"classes": {"0": "outside_body", ...}}``)."""
    table: Optional[Mapping] = classes_json.get("classes", classes_json)
    return {int(k): str(v) for k, v in table.items()}
