"""MONAI augmentation applied to patches (not volumes: cheap on CPU).

Geometry (affine, flips, elastic) moves image and label together (label with
nearest neighbour); intensity transforms touch the image only. Left-right
flips (kji axis 2) are off by default because the liver is on one side.
Each sample re-seeds the pipeline from its own generator -> reproducible.
"""
from __future__ import annotations

import math
from typing import Callable


def build_augmentation(aug: dict, spatial_dims: int) -> Callable[[dict, int], dict] | None:
    """Config ``train.augmentation`` -> callable(sample, seed) or None when disabled."""
    if not aug or not aug.get("enabled", True):
        return None
    from monai.data import set_track_meta
    from monai import transforms as T

    set_track_meta(False)  # plain tensors out: faster, no metadata bookkeeping
    keys, nd = ["image", "label"], spatial_dims
    rot = math.radians(float(aug.get("rotate_deg", 0.0)))
    scale = float(aug.get("scale", 0.0))
    ts: list = []
    if float(aug.get("affine_prob", 0)) > 0 and (rot > 0 or scale > 0):
        ts.append(T.RandAffined(keys, prob=float(aug["affine_prob"]),
                                rotate_range=(rot,) if nd == 2 else (rot, rot, rot),
                                scale_range=(scale,) * nd, mode=("bilinear", "nearest"),
                                padding_mode="border"))
    if float(aug.get("elastic_prob", 0)) > 0:
        p = float(aug["elastic_prob"])
        if nd == 3:
            ts.append(T.Rand3DElasticd(keys, sigma_range=(5, 8), magnitude_range=(50, 150), prob=p,
                                       mode=("bilinear", "nearest"), padding_mode="border"))
        else:
            ts.append(T.Rand2DElasticd(keys, spacing=(20, 20), magnitude_range=(1, 2), prob=p,
                                       mode=("bilinear", "nearest"), padding_mode="border"))
    for axis in aug.get("flip_axes", []) or []:
        # Config axes are in patch order ([k,]j,i); 2D patches have no k axis.
        ax = int(axis) - (3 - nd)
        if 0 <= ax < nd and float(aug.get("flip_prob", 0)) > 0:
            ts.append(T.RandFlipd(keys, prob=float(aug["flip_prob"]), spatial_axis=ax))
    ip = float(aug.get("intensity_prob", 0))
    if ip > 0:
        ts.append(T.RandScaleIntensityd("image", factors=float(aug.get("intensity_scale", 0.1)), prob=ip))
        ts.append(T.RandShiftIntensityd("image", offsets=float(aug.get("intensity_shift", 0.1)), prob=ip))
    if float(aug.get("gamma_prob", 0)) > 0:
        ts.append(T.RandAdjustContrastd("image", gamma=tuple(aug.get("gamma", (0.8, 1.25))),
                                        prob=float(aug["gamma_prob"])))
    if float(aug.get("noise_prob", 0)) > 0:
        ts.append(T.RandGaussianNoised("image", std=float(aug.get("noise_std", 0.05)), prob=float(aug["noise_prob"])))
    if float(aug.get("lowres_prob", 0)) > 0:
        ts.append(T.RandSimulateLowResolutiond("image", prob=float(aug["lowres_prob"]), zoom_range=(0.5, 1.0)))
    if not ts:
        return None
    pipeline = T.Compose(ts)

    def apply(sample: dict, seed: int) -> dict:
        pipeline.set_random_state(seed=seed)
        return pipeline(sample)

    return apply
