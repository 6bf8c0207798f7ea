"""Patch sampling from cached stage arrays with foreground / tumour oversampling.

Every sample is drawn from its own generator seeded by (seed, rank, epoch, index),
so a run is reproducible whatever the number of DataLoader workers, and DDP
ranks draw different patches from their shard of the cases.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .determinism import sample_rng

MAX_INDICES = 200_000  # per case and kind: enough variety, bounded memory


@dataclass
class StageCase:
    """One case resampled to a stage's grid: normalised CT and class indices (not label values)."""

    case_id: str
    image: np.ndarray                 # [k, j, i] float16/float32, normalised
    target: np.ndarray                # [k, j, i] uint8 class indices
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)   # (i, j, k) mm
    fg_idx: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int32))
    tumor_idx: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int32))
    pad_value: float = 0.0
    #: Raw cached label values (organ ids >= 3 where a multi-organ map was given); the torch
    #: augmentation backend draws these and maps them to classes itself.
    labels: np.ndarray | None = None

    @classmethod
    def build(cls, case_id: str, image: np.ndarray, target: np.ndarray, spacing, tumor_class: int | None,
              seed: int = 0, labels: np.ndarray | None = None) -> "StageCase":
        rng = np.random.default_rng(seed)
        fg = _subsample(np.argwhere(target > 0), rng)
        tu = _subsample(np.argwhere(target == tumor_class), rng) if tumor_class is not None else np.zeros((0, 3), np.int32)
        pad = float(image.min()) if image.size else 0.0
        return cls(case_id, image, target, tuple(spacing), fg, tu, pad, labels)


def _subsample(idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(idx) > MAX_INDICES:
        idx = idx[np.sort(rng.choice(len(idx), MAX_INDICES, replace=False))]
    return idx.astype(np.int32)


def label_lut(class_to_label: Sequence[int], any_nonzero_is_foreground: bool) -> np.ndarray:
    """Label value -> class index lookup table (coarse: any non-zero label is the liver region)."""
    lut = np.zeros(256, np.uint8)
    for c, lab in enumerate(class_to_label):
        lut[int(lab)] = c
    if any_nonzero_is_foreground:
        # Liver and tumour (and any label the stage outputs) form the region; organ ids from
        # a multi-organ map (3, 4, ...) that the stage does not output stay background.
        for lab in {1, 2} | {int(v) for v in class_to_label if int(v)}:
            lut[lab] = 1
    return lut


def crop_with_pad(arr: np.ndarray, lo: Sequence[int], size: Sequence[int], pad_value: float) -> np.ndarray:
    """arr[lo:lo+size] over the leading len(size) axes, padding outside the array."""
    nd = len(size)
    hi = [l + s for l, s in zip(lo, size)]
    src = tuple(slice(max(l, 0), min(h, arr.shape[d])) for d, (l, h) in enumerate(zip(lo, hi)))
    out = arr[src]
    pads = [(max(0, -l), max(0, h - arr.shape[d])) for d, (l, h) in enumerate(zip(lo, hi))]
    if any(p != (0, 0) for p in pads):
        out = np.pad(out, pads + [(0, 0)] * (arr.ndim - nd), mode="constant", constant_values=pad_value)
    return out


def choose_centre(case: StageCase, rng: np.random.Generator, fg_prob: float, tumor_prob: float) -> np.ndarray:
    """Tumour voxel with p=tumor_prob, else a foreground voxel with p=fg_prob, else uniform."""
    u = rng.random()
    if u < tumor_prob and len(case.tumor_idx):
        return case.tumor_idx[rng.integers(len(case.tumor_idx))]
    if u < tumor_prob + fg_prob and len(case.fg_idx):
        return case.fg_idx[rng.integers(len(case.fg_idx))]
    return np.array([rng.integers(s) for s in case.image.shape])


def sample_patch(case: StageCase, patch_size: Sequence[int], rng: np.random.Generator,
                 fg_prob: float, tumor_prob: float, raw_labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(image, target) patch; a 2-value patch_size samples an axial slice (k) and a 2D window.

    ``raw_labels``: return the case's raw label values instead of class indices.
    """
    c = choose_centre(case, rng, fg_prob, tumor_prob)
    lab = case.labels if raw_labels and case.labels is not None else case.target
    if len(patch_size) == 2:
        k = int(c[0])
        img, tgt = case.image[k], lab[k]
        c = c[1:]
    else:
        img, tgt = case.image, lab
    # Random offset of the centre inside the patch so foreground is not always in the middle.
    jitter = [int(rng.integers(-(p // 4), p // 4 + 1)) for p in patch_size]
    lo = [int(cc) - p // 2 + j for cc, p, j in zip(c, patch_size, jitter)]
    return (crop_with_pad(img, lo, patch_size, case.pad_value).astype(np.float32),
            crop_with_pad(tgt, lo, patch_size, 0))


class PatchDataset:
    """Map-style dataset of ``length`` random patches per epoch (torch Dataset protocol)."""

    def __init__(self, cases: list[StageCase], patch_size: Sequence[int], length: int, seed: int,
                 fg_prob: float, tumor_prob: float, rank: int = 0,
                 transform: Callable[[dict, int], dict] | None = None, raw_labels: bool = False,
                 weights: Sequence[float] | None = None):
        """``raw_labels``: yield (float16 image crop, uint8 raw labels) of ``patch_size`` for an
        on-device augmenter (the torch backend) instead of augmented (image, class) patches."""
        if not cases:
            raise ValueError("no training cases for this stage")
        self.raw_labels = bool(raw_labels)
        self.cases, self.patch_size, self.length = cases, tuple(int(p) for p in patch_size), int(length)
        self.seed, self.rank, self.epoch = int(seed), int(rank), 0
        self.fg_prob, self.tumor_prob, self.transform = float(fg_prob), float(tumor_prob), transform
        # Cumulative case weights (e.g. real vs synthetic cases); None: every case equally likely.
        self.cum_weights = None if weights is None else np.cumsum(np.asarray(weights, float) / float(sum(weights)))
        if self.cum_weights is not None and len(self.cum_weights) != len(cases):
            raise ValueError("one sampling weight per case is needed")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        import torch

        rng = sample_rng(self.seed, self.rank, self.epoch, index)
        if self.cum_weights is None:
            case = self.cases[int(rng.integers(len(self.cases)))]
        else:
            pick = int(np.searchsorted(self.cum_weights, rng.random(), side="right"))
            case = self.cases[min(pick, len(self.cases) - 1)]
        img, tgt = sample_patch(case, self.patch_size, rng, self.fg_prob, self.tumor_prob, self.raw_labels)
        if self.raw_labels:
            return torch.from_numpy(img[None].astype(np.float16)), torch.from_numpy(np.ascontiguousarray(tgt))
        sample = {"image": img[None], "label": tgt[None].astype(np.float32)}
        if self.transform is not None:
            sample = self.transform(sample, int(rng.integers(2**31 - 1)))
        image = torch.as_tensor(np.ascontiguousarray(sample["image"]), dtype=torch.float32)
        label = torch.as_tensor(np.ascontiguousarray(sample["label"]))[0].round().long()
        return image, label
