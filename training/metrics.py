"""Segmentation metrics in physical units, with explicit empty-mask conventions.

Arrays are ``[k, j, i]`` (engine convention) and ``spacing`` is given for
``(i, j, k)`` in mm like everywhere in the engine; it is reversed internally
for scipy (which wants per-array-axis sampling).

Definitions
-----------
- Dice = 2|P∩T| / (|P|+|T|); IoU (Jaccard) = |P∩T| / |P∪T|.
- Surface of a mask = mask voxels with at least one 6-connected neighbour
  outside the mask (``mask & ~binary_erosion(mask)``, face connectivity,
  outside the array counts as background).
- Surface distances: for each surface voxel of P the Euclidean distance (mm,
  ``distance_transform_edt(..., sampling=spacing)``) to the nearest surface
  voxel of T, and vice versa. Both directed sets are **pooled**:
  HD95 = 95th percentile (numpy linear interpolation) of the pooled distances
  (the medpy / LiTS convention), HD = max, ASSD = mean of the pooled distances
  = (Σd(P→T)+Σd(T→P)) / (|∂P|+|∂T|) (Heimann et al. 2009 / LiTS definition).
- RVD (relative volume difference) = (|P| - |T|) / |T| (signed; 0 = same volume).

Empty masks
-----------
- both empty: Dice = IoU = 1, HD95 = HD = ASSD = 0, RVD = 0 (a correct "nothing").
- exactly one empty: Dice = IoU = 0, HD95 = HD = ASSD = NaN (undefined: no
  surface to measure to; NaN so means/medians over cases skip them, and the
  summary counts those cases separately), RVD = -1 if P is empty, NaN if T is
  empty (division by zero).

Lesion-wise detection
---------------------
Lesions are 3D connected components with full (26-) connectivity. A predicted
lesion and a true lesion **match if they overlap by at least one voxel**
(``min_iou=0``; pass ``min_iou=0.1`` for the stricter "IoU > 0.1" criterion).
Recall = matched true lesions / true lesions; precision = matched predicted
lesions / predicted lesions (NaN when the denominator is 0). Per-lesion Dice of
a true lesion = Dice between it and the union of the predicted lesions matched
to it (0 if missed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

NAN = float("nan")


def _sampling(spacing_ijk: Sequence[float], ndim: int) -> tuple[float, ...]:
    s = tuple(float(x) for x in spacing_ijk)
    if len(s) != ndim:
        raise ValueError(f"spacing {s} does not match a {ndim}-D array")
    return s[::-1]  # (i, j, k) -> array order (k, j, i)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / denom


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    union = int(np.logical_or(p, t).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(p, t).sum()) / union


def relative_volume_difference(pred: np.ndarray, truth: np.ndarray) -> float:
    vp, vt = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
    if vt == 0:
        return 0.0 if vp == 0 else NAN
    return (vp - vt) / vt


def surface(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask, bool)
    st = ndimage.generate_binary_structure(m.ndim, 1)
    return m & ~ndimage.binary_erosion(m, structure=st, border_value=0)


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to their union's bounding box plus a 1-voxel zero border.

    Why: the distance transform of a full 512x512x300 CT is slow and memory
    hungry; every surface voxel of either mask lies inside this box, so the
    nearest-surface distances are unchanged.
    """
    u = a | b
    idx = np.nonzero(u)
    sl = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in idx)
    return np.pad(a[sl], 1), np.pad(b[sl], 1)


def surface_distances(pred: np.ndarray, truth: np.ndarray, spacing_ijk: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances (mm): P-surface -> T-surface and T-surface -> P-surface.

    Both masks must be non-empty.
    """
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if not p.any() or not t.any():
        raise ValueError("surface distances need two non-empty masks")
    sampling = _sampling(spacing_ijk, p.ndim)
    p, t = _crop_to_union(p, t)
    sp, stt = surface(p), surface(t)
    dt_t = ndimage.distance_transform_edt(~stt, sampling=sampling)
    dt_p = ndimage.distance_transform_edt(~sp, sampling=sampling)
    return dt_t[sp], dt_p[stt]


def distance_metrics(pred: np.ndarray, truth: np.ndarray, spacing_ijk: Sequence[float]) -> dict[str, float]:
    """``hd95``, ``hd`` and ``assd`` in mm with the empty-mask conventions above."""
    pe, te = not np.any(pred), not np.any(truth)
    if pe and te:
        return {"hd95": 0.0, "hd": 0.0, "assd": 0.0}
    if pe or te:
        return {"hd95": NAN, "hd": NAN, "assd": NAN}
    d_pt, d_tp = surface_distances(pred, truth, spacing_ijk)
    pooled = np.concatenate([d_pt, d_tp])
    return {"hd95": float(np.percentile(pooled, 95)), "hd": float(pooled.max()), "assd": float(pooled.mean())}


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    st = ndimage.generate_binary_structure(np.asarray(mask).ndim, np.asarray(mask).ndim)  # 26-connectivity in 3D
    lab, n = ndimage.label(np.asarray(mask, bool), structure=st)
    return lab, int(n)


def lesion_detection(pred: np.ndarray, truth: np.ndarray, min_iou: float = 0.0) -> dict[str, Any]:
    """Lesion-wise matching (see module docstring). Returns counts, precision,
    recall and the list of per-true-lesion Dice values."""
    pl, npred = label_components(pred)
    tl, ntrue = label_components(truth)
    matched_pred: set[int] = set()
    lesion_dice: list[float] = []
    tp_true = 0
    both = (pl > 0) & (tl > 0)
    pairs = np.unique(np.stack([tl[both], pl[both]]), axis=1) if both.any() else np.zeros((2, 0), int)
    pred_sizes = np.bincount(pl.ravel(), minlength=npred + 1)
    true_sizes = np.bincount(tl.ravel(), minlength=ntrue + 1)
    for t in range(1, ntrue + 1):
        cands = pairs[1, pairs[0] == t]
        tmask = None
        hits = []
        for p in cands:
            if min_iou > 0:
                tmask = tl == t if tmask is None else tmask
                inter = int(np.count_nonzero(tmask & (pl == p)))
                u = int(true_sizes[t] + pred_sizes[p] - inter)
                if inter / u <= min_iou:
                    continue
            hits.append(int(p))
        if hits:
            tp_true += 1
            matched_pred.update(hits)
            tmask = tl == t if tmask is None else tmask
            lesion_dice.append(dice(np.isin(pl, hits), tmask))
        else:
            lesion_dice.append(0.0)
    tp_pred = len(matched_pred)
    return {
        "n_true": ntrue,
        "n_pred": npred,
        "tp_true": tp_true,
        "tp_pred": tp_pred,
        "fn": ntrue - tp_true,
        "fp": npred - tp_pred,
        "recall": tp_true / ntrue if ntrue else NAN,
        "precision": tp_pred / npred if npred else NAN,
        "lesion_dice": lesion_dice,
        "mean_lesion_dice": float(np.mean(lesion_dice)) if lesion_dice else NAN,
    }


def class_metrics(pred: np.ndarray, truth: np.ndarray, spacing_ijk: Sequence[float]) -> dict[str, Any]:
    """All overlap/distance/volume metrics of one binary class."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    vox = float(np.prod([float(s) for s in spacing_ijk]))
    out: dict[str, Any] = {
        "dice": dice(p, t),
        "iou": iou(p, t),
        **distance_metrics(p, t, spacing_ijk),
        "rvd": relative_volume_difference(p, t),
        "true_ml": int(t.sum()) * vox / 1000.0,
        "pred_ml": int(p.sum()) * vox / 1000.0,
        "true_empty": not t.any(),
        "pred_empty": not p.any(),
        "intersection": int(np.logical_and(p, t).sum()),
        "sum_sizes": int(p.sum()) + int(t.sum()),
    }
    return out


def case_metrics(
    pred_label: np.ndarray,
    true_label: np.ndarray,
    spacing_ijk: Sequence[float],
    classes: Mapping[str, Iterable[int]],
    lesion_classes: Iterable[str] = ("tumor",),
    min_iou: float = 0.0,
) -> dict[str, dict[str, Any]]:
    """Metrics per class for one case. ``classes`` maps a class name to the
    label values forming it (e.g. ``{"liver": (1, 2), "tumor": (2,)}``)."""
    if pred_label.shape != true_label.shape:
        raise ValueError(f"prediction shape {pred_label.shape} != truth shape {true_label.shape}")
    lesion_classes = set(lesion_classes)
    out = {}
    for name, values in classes.items():
        vals = list(values)
        p, t = np.isin(pred_label, vals), np.isin(true_label, vals)
        m = class_metrics(p, t, spacing_ijk)
        if name in lesion_classes:
            m["lesions"] = lesion_detection(p, t, min_iou=min_iou)
        out[name] = m
    return out


@dataclass
class GlobalDice:
    """Dice pooled over cases: 2 Σ|P∩T| / Σ(|P|+|T|) (LiTS "Dice global")."""

    intersection: int = 0
    sum_sizes: int = 0

    def add(self, pred: np.ndarray | None = None, truth: np.ndarray | None = None, *,
            intersection: int | None = None, sum_sizes: int | None = None) -> None:
        if intersection is None:
            p, t = np.asarray(pred, bool), np.asarray(truth, bool)
            intersection, sum_sizes = int(np.logical_and(p, t).sum()), int(p.sum()) + int(t.sum())
        self.intersection += int(intersection)
        self.sum_sizes += int(sum_sizes or 0)

    @property
    def value(self) -> float:
        return 1.0 if self.sum_sizes == 0 else 2.0 * self.intersection / self.sum_sizes


@dataclass
class LesionTotals:
    """Lesion detection counts pooled over cases."""

    n_true: int = 0
    n_pred: int = 0
    tp_true: int = 0
    tp_pred: int = 0
    lesion_dice: list[float] = field(default_factory=list)

    def add(self, det: Mapping[str, Any]) -> None:
        self.n_true += det["n_true"]
        self.n_pred += det["n_pred"]
        self.tp_true += det["tp_true"]
        self.tp_pred += det["tp_pred"]
        self.lesion_dice.extend(det["lesion_dice"])

    def summary(self) -> dict[str, float]:
        return {
            "n_true": self.n_true, "n_pred": self.n_pred, "tp_true": self.tp_true, "tp_pred": self.tp_pred,
            "recall": self.tp_true / self.n_true if self.n_true else NAN,
            "precision": self.tp_pred / self.n_pred if self.n_pred else NAN,
            "mean_lesion_dice": float(np.mean(self.lesion_dice)) if self.lesion_dice else NAN,
        }


def describe(values: Iterable[float]) -> dict[str, float]:
    """mean / median / std / min / max / n over the finite values (NaN skipped, counted)."""
    v = np.asarray([float(x) for x in values], dtype=float)
    fin = v[np.isfinite(v)]
    if fin.size == 0:
        return {"n": 0, "n_nan": int(v.size), "mean": NAN, "median": NAN, "std": NAN, "min": NAN, "max": NAN}
    return {"n": int(fin.size), "n_nan": int(v.size - fin.size), "mean": float(fin.mean()),
            "median": float(np.median(fin)), "std": float(fin.std()), "min": float(fin.min()), "max": float(fin.max())}


def is_nan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)
