"""Anatomical clean-up of a predicted liver/tumour labelmap.

Rules (applied in this order, on the input grid):

1. The organ is liver + tumour. Only its largest connected component is kept
   (26-connectivity: voxels sharing a face, edge or corner are connected).
2. A tumour blob outside that component survives (whole) only if one of its
   voxel centres lies within ``tumor_max_distance_mm`` (physical mm, default
   5) of a kept organ voxel centre.
3. Holes in the organ are filled per axial (k) slice and in 3D; filled voxels
   become liver, tumour stays tumour. Background counts as a hole only if it is
   not connected to the array border (6-connectivity in 3D, 4 in-plane: the
   complements of the 26/8 foreground connectivity).
4. Tumour components (26-connected) smaller than ``min_lesion_mm3`` (default
   30) are dropped: they become liver when part of the kept organ (or a filled
   hole), background when they were a detached blob kept by rule 2. The
   pipeline applies this rule once more on the CT's own grid after the paste-back
   (``drop_lesion_fragments``), which can cut slivers off a lesion's rim.

Lesion-only bundles (``lesions_only``: task ``lung_tumor``, no organ label) skip
rules 1-3, which would keep only the largest lesion: ``postprocess_lesions``
applies rule 4 alone to every label.

Backend: SimpleITK only (a core dependency). Measured on a 256^3 uint8 mask,
2 threads: connected components + largest 0.11 s (scipy.ndimage.label 0.23 s),
3D hole fill via border-connected background labels 0.10 s (scipy
binary_fill_holes 0.52 s, sitk.BinaryFillhole 0.21 s), per-slice fill 0.11 s
(scipy 0.12 s, a 2D sitk loop 0.55 s), distance map 0.5-1 s (scipy EDT 3.2 s).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

DEFAULTS = {"min_lesion_mm3": 30.0, "fill_holes": True, "tumor_max_distance_mm": 5.0}

#: Bundle tasks (model.json ``training.task``) whose labels are lesions with no organ around them.
LESION_TASKS = ("lung_tumor",)


def lesions_only(description: Mapping[str, Any] | None) -> bool:
    """Whether a bundle segments lesions without an organ (e.g. MSD Task06 lung tumours).

    The organ rules (largest component, hole filling, tumours near the organ) would keep only
    the biggest lesion of such a bundle, so it gets speck removal only. ``postprocess.lesions_only``
    in model.json wins; otherwise ``training.task`` decides.
    """
    desc = description or {}
    pp = desc.get("postprocess") or {}
    if "lesions_only" in pp:
        return bool(pp["lesions_only"])
    return str((desc.get("training") or {}).get("task", "")) in LESION_TASKS


def _components(mask: np.ndarray, fully_connected: bool) -> np.ndarray:
    """Connected-component labels (uint32, 0 = background) of a boolean 3D or 2D mask."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
    f = sitk.ConnectedComponentImageFilter()
    f.SetFullyConnected(fully_connected)
    # One thread: ITK's threaded labelling merges its per-thread labels serially, which costs
    # more than it saves on a liver box (whole post-processing stage with ITK's global thread count
    # at 16: 0.114 s, at 1: 0.083 s, on a 16-core GPU host; no difference on 2 cores).
    f.SetNumberOfThreads(1)
    # GetArrayFromImage copies: a view of a temporary image would dangle.
    return sitk.GetArrayFromImage(f.Execute(img))


def largest_component(mask: np.ndarray, fully_connected: bool = True) -> np.ndarray:
    """Boolean mask of the largest connected component (26-connected by default).

    An empty mask gives an empty mask.
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    if not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    labels = _components(mask, fully_connected)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == int(counts.argmax())


def _filled_from_background_labels(labels: np.ndarray, border_ids: np.ndarray) -> np.ndarray:
    """Foreground (label 0) plus every background region whose id is not on the border."""
    filled = np.ones(int(labels.max()) + 1, dtype=bool)
    filled[border_ids] = False
    filled[0] = True
    return filled[labels]


def fill_holes_3d(mask: np.ndarray) -> np.ndarray:
    """Mask with every background region not touching the array border filled."""
    mask = np.asarray(mask, dtype=bool)
    labels = _components(~mask, fully_connected=False)
    faces = [labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
    border = np.unique(np.concatenate([f.ravel() for f in faces]))
    return _filled_from_background_labels(labels, border)


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill holes independently in every k (axial) slice of a [k, j, i] mask.

    All slices are labelled in one call: they are stacked into one 2D image
    with a foreground separator row between them so regions never join
    across slices.
    """
    mask = np.asarray(mask, dtype=bool)
    k, j, i = mask.shape
    stacked = np.zeros((k, j + 1, i), dtype=bool)
    stacked[:, :j] = ~mask
    labels = _components(stacked.reshape(k * (j + 1), i), fully_connected=False).reshape(k, j + 1, i)[:, :j]
    faces = [labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
    border = np.unique(np.concatenate([f.ravel() for f in faces]))
    return _filled_from_background_labels(labels, border)


def _near(organ: np.ndarray, candidates: np.ndarray, spacing_ijk: Sequence[float], max_mm: float) -> np.ndarray:
    """Connected candidate blobs with at least one voxel within ``max_mm`` (physical) of ``organ``.

    The distance map is computed only on the candidates' bounding box grown by
    ``max_mm``: any organ voxel closer than that lies inside the box.
    """
    import SimpleITK as sitk

    out = np.zeros(candidates.shape, dtype=bool)
    if max_mm <= 0 or not candidates.any() or not organ.any():
        return out
    sp_kji = np.asarray(spacing_ijk, dtype=float)[::-1]
    grow = np.ceil(max_mm / sp_kji).astype(int) + 1
    idx = np.nonzero(candidates)
    lo = np.maximum([a.min() for a in idx] - grow, 0)
    hi = np.minimum([a.max() + 1 for a in idx] + grow, candidates.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub_organ = organ[box]
    if not sub_organ.any():
        return out
    img = sitk.GetImageFromArray(sub_organ.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing_ijk))
    dist_img = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    dist = sitk.GetArrayFromImage(dist_img)
    # Distance between voxel centres; +1e-6 so an exactly-at-limit voxel counts.
    near = candidates[box] & (dist <= max_mm + 1e-6)
    if not near.any():
        return out
    # A blob is kept or dropped whole: any voxel close enough keeps it all.
    labels = _components(candidates[box], fully_connected=True)
    hit = np.zeros(int(labels.max()) + 1, dtype=bool)
    hit[np.unique(labels[near])] = True
    hit[0] = False
    out[box] = hit[labels]
    return out


def postprocess(
    label_kji: np.ndarray,
    spacing_ijk: Sequence[float],
    config: Mapping[str, Any] | None = None,
    liver_label: int = 1,
    tumor_label: int = 2,
) -> np.ndarray:
    """Return a cleaned uint8 labelmap (same shape) following the module rules above.

    ``config`` keys (bundle ``postprocess`` section): ``min_lesion_mm3``,
    ``fill_holes``, ``tumor_max_distance_mm``; missing keys use ``DEFAULTS``.
    Labels other than liver/tumour are treated as background and removed.
    """
    cfg = {**DEFAULTS, **(dict(config) if config else {})}
    label = np.asarray(label_kji)
    if label.ndim != 3:
        raise ValueError(f"postprocess expects a 3D [k, j, i] labelmap, got shape {label.shape}")
    liver = label == liver_label
    tumor = label == tumor_label

    organ = largest_component(liver | tumor)
    if not organ.any():
        return np.zeros(label.shape, dtype=np.uint8)
    # Separate tumour blobs close to the liver (e.g. a one-voxel gap) are kept;
    # they never touch the kept component (else they would belong to it).
    detached = _near(organ, tumor & ~organ, spacing_ijk, float(cfg["tumor_max_distance_mm"]))
    tumor_kept = (tumor & organ) | detached
    organ = organ | detached

    if cfg.get("fill_holes", True):
        organ = fill_holes_3d(fill_holes_per_slice(organ))

    specks = _specks(tumor_kept, spacing_ijk, float(cfg["min_lesion_mm3"]))
    if specks.any():
        tumor_kept &= ~specks
        # Specks inside the liver become liver; detached ones become background.
        organ &= ~(specks & detached)

    out = np.zeros(label.shape, dtype=np.uint8)
    out[organ] = liver_label
    out[tumor_kept] = tumor_label
    return out


def _specks(mask: np.ndarray, spacing_ijk: Sequence[float], min_mm3: float) -> np.ndarray:
    """The 26-connected components of ``mask`` smaller than ``min_mm3`` (rule 4)."""
    min_vox = float(min_mm3) / float(np.prod(spacing_ijk))
    if min_vox <= 1 or not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    labels = _components(mask, fully_connected=True)
    small = np.bincount(labels.ravel()) < min_vox
    small[0] = False
    return small[labels]


def remove_specks(label_kji: np.ndarray, spacing_ijk: Sequence[float], min_mm3: float) -> np.ndarray:
    """Zero every 26-connected component (per label value) smaller than ``min_mm3``; the rest is kept."""
    out = np.array(label_kji, dtype=np.uint8, copy=True)
    for value in np.unique(out[out > 0]):
        out[_specks(out == value, spacing_ijk, min_mm3)] = 0
    return out


def drop_lesion_fragments(label_kji: np.ndarray, spacing_ijk: Sequence[float], min_mm3: float,
                          box: tuple | None = None, liver_label: int = 1, tumor_label: int = 2) -> np.ndarray:
    """Rule 4 again on the output grid, in place: tumour pieces smaller than ``min_mm3`` that the
    smooth paste-back cut off a lesion become liver where they touch liver, else background.

    Why: rule 4 runs on the fine grid (1.5 mm); resampling to a finer CT can split a lesion's thin
    rim into pieces of one or two voxels, which the lesion table would list as lesions (round 4-6
    leave-one-out: 7 of 8 false lesions on the LiTS crop were under 100 mm^3, their median 2 mm^3).
    ``box`` ([k, j, i] slices holding every tumour voxel; the pipeline maps it from the fine grid):
    only that box is labelled (default: the whole labelmap)."""
    label = np.asarray(label_kji)
    box = box or (slice(None),) * 3
    sub = label[box]
    min_vox = float(min_mm3) / float(np.prod(spacing_ijk))
    if min_vox <= 1 or sub.size == 0:
        return label
    labels = _components(sub == tumor_label, fully_connected=True)
    small = np.bincount(labels.ravel()) < min_vox
    small[0] = False
    if not small.any():
        return label
    pts = np.argwhere(small[labels])  # the fragments' voxels: few
    ids = labels[tuple(pts.T)]
    # A piece touches liver when one of its voxels has a liver voxel among its 26 neighbours (in the
    # whole labelmap, not only the box).
    origin = np.array([sl.start or 0 for sl in box])
    full = pts + origin
    touching = np.zeros(small.size, dtype=bool)
    for d in np.argwhere(np.ones((3, 3, 3), bool)) - 1:
        q = full + d
        ok = np.all((q >= 0) & (q < label.shape), axis=1)
        hit = np.zeros(len(q), dtype=bool)
        hit[ok] = label[tuple(q[ok].T)] == liver_label
        np.logical_or.at(touching, ids[hit], True)
    sub[tuple(pts.T)] = np.where(touching[ids], liver_label, 0).astype(label.dtype)
    return label


def postprocess_lesions(label_kji: np.ndarray, spacing_ijk: Sequence[float],
                        config: Mapping[str, Any] | None = None) -> np.ndarray:
    """Clean-up for lesion-only bundles: every lesion survives, only specks < ``min_lesion_mm3`` go."""
    cfg = {**DEFAULTS, **(dict(config) if config else {})}
    label = np.asarray(label_kji)
    if label.ndim != 3:
        raise ValueError(f"postprocess expects a 3D [k, j, i] labelmap, got shape {label.shape}")
    return remove_specks(label, spacing_ijk, float(cfg["min_lesion_mm3"]))
