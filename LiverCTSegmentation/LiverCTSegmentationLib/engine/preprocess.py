"""Resampling, intensity normalisation and cropping (pure functions).

Training uses exactly these functions, so a model sees the same inputs in
training and in the module. Resampling always goes through physical space
with SimpleITK, so oblique and flipped grids are handled by construction.
Resampled grids keep the source's direction, or (``orientation="canonical"``,
chosen per stage by the model bundle) reorder and flip its axes towards LPS so
a network always sees the patient the same way round; either way
``resample_to_spacing`` keeps the field of view (the outer voxel *edges* stay
where they were).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .volume import Volume, nonzero_box

_INTERP = {"linear", "nearest", "bspline"}


def _interpolator(name: str):
    import SimpleITK as sitk

    if name not in _INTERP:
        raise ValueError(f"interpolation must be one of {sorted(_INTERP)}, got {name!r}")
    return {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}[name]


def grid_for_spacing(vol: Volume, spacing: Sequence[float]) -> tuple[tuple, tuple, tuple]:
    """(size_ijk, spacing, origin) of a grid with ``spacing`` covering ``vol``'s field of view."""
    old_sp = np.asarray(vol.spacing, float)
    new_sp = np.asarray(spacing, float)
    size = np.asarray(vol.size_ijk, float)
    new_size = np.maximum(1, np.round(size * old_sp / new_sp)).astype(int)
    # keep the first voxel's outer corner fixed: origin shifts by half a voxel difference
    origin = np.asarray(vol.origin) + vol.direction @ ((new_sp - old_sp) / 2.0)
    return tuple(int(s) for s in new_size), tuple(float(s) for s in new_sp), tuple(float(o) for o in origin)


ORIENTATIONS = ("native", "canonical")


def canonical_axes(direction: np.ndarray) -> tuple[list[int], list[float]]:
    """For each LPS axis (L, P, S): the grid axis closest to it and that axis' sign.

    A grid whose axis ``a`` is ``sign[a] * direction[:, axis[a]]`` runs i -> patient
    left, j -> posterior, k -> superior (up to the input's obliqueness), whatever
    the file's own axis order (RAS, LPS, coronal, flipped...).
    """
    d = np.asarray(direction, float)
    remaining, axis, sign = [0, 1, 2], [], []
    # Strongest alignments first so each grid axis is used once even for oblique inputs.
    for a in sorted(range(3), key=lambda r: -np.max(np.abs(d[r]))):
        c = max(remaining, key=lambda col: abs(d[a, col]))
        remaining.remove(c)
        axis.append((a, c, 1.0 if d[a, c] >= 0 else -1.0))
    axis.sort()
    return [c for _, c, _ in axis], [s for _, _, s in axis]


def canonical_grid(vol: Volume, spacing: Sequence[float]) -> tuple[tuple, tuple, tuple, np.ndarray]:
    """(size_ijk, spacing, origin, direction) of a grid with ``spacing`` over ``vol``'s field of
    view whose axes are the input's own axes reordered and flipped towards L, P, S.

    Same voxel edges as :func:`grid_for_spacing`, so only the axis order differs: a
    network then always sees the patient the same way round (liver on the image's left).
    """
    axis, sign = canonical_axes(vol.direction)
    old_sp = np.asarray(vol.spacing, float)
    size_old = np.asarray(vol.size_ijk, float)
    new_sp = np.asarray(spacing, float)
    direction = np.stack([sign[a] * vol.direction[:, axis[a]] for a in range(3)], axis=1)
    extent = np.array([size_old[axis[a]] * old_sp[axis[a]] for a in range(3)])
    size = np.maximum(1, np.round(extent / new_sp)).astype(int)
    # The outer corner where every new axis starts, in the old voxel index frame.
    edge = np.array([-0.5 if sign[list(axis).index(c)] > 0 else size_old[c] - 0.5 for c in range(3)])
    corner = np.asarray(vol.origin) + vol.direction @ (edge * old_sp)
    origin = corner + direction @ (new_sp / 2.0)
    return tuple(int(s) for s in size), tuple(float(s) for s in new_sp), tuple(float(o) for o in origin), direction


def target_grid(vol: Volume, spacing: Sequence[float], orientation: str = "native") -> tuple[tuple, tuple, tuple, np.ndarray]:
    """(size_ijk, spacing, origin, direction) that :func:`resample_to_spacing` resamples onto."""
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    if orientation == "canonical":
        return canonical_grid(vol, spacing)
    size, sp, origin = grid_for_spacing(vol, spacing)
    return size, sp, origin, vol.direction.copy()


def resample_to_spacing(vol: Volume, spacing: Sequence[float], interpolation: str = "linear",
                        default_value: Optional[float] = None, orientation: str = "native") -> Volume:
    """Resample onto a grid of ``spacing`` (i, j, k) mm over the same field of view.

    ``orientation``: ``native`` keeps the source's direction; ``canonical`` reorders and
    flips the axes towards LPS (:func:`canonical_grid`). ``linear``/``bspline`` give
    float32; ``nearest`` keeps the dtype (use it for labels). Outside the source the
    value is ``default_value`` (default: the array minimum for images, i.e. air for CT,
    and 0 for labels).
    """
    import SimpleITK as sitk

    interp = _interpolator(interpolation)
    size, sp, origin, direction = target_grid(vol, spacing, orientation)
    if default_value is None:
        default_value = 0.0 if interpolation == "nearest" or vol.array.size == 0 else float(vol.array.min())
    img = vol.to_sitk()  # no cast of the full-resolution input: only the output is float32
    f = sitk.ResampleImageFilter()
    f.SetSize(size)
    f.SetOutputSpacing(sp)
    f.SetOutputOrigin(origin)
    f.SetOutputDirection(tuple(np.asarray(direction, float).flatten()))
    f.SetInterpolator(interp)
    f.SetDefaultPixelValue(float(default_value))
    f.SetOutputPixelType(img.GetPixelID() if interpolation == "nearest" else sitk.sitkFloat32)
    out = f.Execute(img)
    return Volume(sitk.GetArrayFromImage(out), sp, origin, np.array(direction, float), metadata=dict(vol.metadata))


def _resample_onto(vol: Volume, size_ijk, spacing, origin, direction, interpolation: str, default_value: float):
    import SimpleITK as sitk

    img = vol.to_sitk()
    f = sitk.ResampleImageFilter()
    f.SetSize(tuple(int(s) for s in size_ijk))
    f.SetOutputSpacing(tuple(float(s) for s in spacing))
    f.SetOutputOrigin(tuple(float(o) for o in origin))
    f.SetOutputDirection(tuple(np.asarray(direction, float).flatten()))
    f.SetInterpolator(_interpolator(interpolation))
    f.SetDefaultPixelValue(float(default_value))
    if interpolation != "nearest":
        f.SetOutputPixelType(sitk.sitkFloat32)
    return sitk.GetArrayFromImage(f.Execute(img))


def resample_like(vol: Volume, reference: Volume, interpolation: str = "nearest",
                  default_value: float = 0.0) -> Volume:
    """Resample ``vol`` onto ``reference``'s exact grid through physical space."""
    arr = _resample_onto(vol, reference.size_ijk, reference.spacing, reference.origin, reference.direction,
                         interpolation, default_value)
    return Volume(arr, reference.spacing, reference.origin, reference.direction.copy(), metadata=dict(vol.metadata))


def physical_box_to_index_range(reference: Volume, corners_lps: np.ndarray, margin_mm: float = 0.0):
    """Index range [lo, hi] (inclusive, (i, j, k), clipped) of ``reference`` covering LPS points + margin.

    Returns None when the box does not intersect the reference.
    """
    m = reference.ijk_to_lps()
    inv = np.linalg.inv(m)
    pts = np.c_[np.asarray(corners_lps, float), np.ones(len(corners_lps))] @ inv.T
    ijk = pts[:, :3]
    margin_vox = float(margin_mm) / np.asarray(reference.spacing)
    lo = np.floor(ijk.min(axis=0) - margin_vox + 1e-6).astype(int)
    hi = np.ceil(ijk.max(axis=0) + margin_vox - 1e-6).astype(int)
    size = np.asarray(reference.size_ijk)
    if np.any(hi < 0) or np.any(lo > size - 1):
        return None
    return np.clip(lo, 0, size - 1), np.clip(hi, 0, size - 1)


def voxel_box_corners(vol: Volume, lo_ijk, hi_ijk) -> np.ndarray:
    """LPS coordinates of the 8 outer corners of voxels lo..hi (inclusive)."""
    lo = np.asarray(lo_ijk, float) - 0.5
    hi = np.asarray(hi_ijk, float) + 0.5
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    return vol.physical_points(corners)


SMOOTH_CHUNK_VOXELS = 8_000_000  # float32 working set of the smooth paste-back: ~32 MB per chunk


def resample_labels_to_reference(label: Volume, reference: Volume, smooth: bool = False, device=None) -> Volume:
    """uint8 labels onto ``reference``'s exact grid (through physical space).

    Only the part of the reference grid covered by ``label`` is resampled
    (labels are 0 elsewhere), and the reference's voxels are never copied.
    ``smooth=False``: nearest neighbour. ``smooth=True``: each nested region
    (label >= v, for v ascending: liver-with-tumour, then tumour) is
    interpolated linearly and cut at 0.5, so coarse-grid staircases become
    smooth boundaries at the finer native resolution (closer to what
    interpolating probabilities gives), processed in slabs of at most
    ``SMOOTH_CHUNK_VOXELS`` so no float array of the whole CT is ever made.
    ``device``: a torch device to interpolate the smooth paste-back on with ``resample_torch``
    (same semantics as ITK's linear interpolator); None: ITK.
    """
    lab = label if label.array.dtype == np.uint8 else label.with_array(label.array.astype(np.uint8))
    out = np.zeros(reference.shape_kji[:3], dtype=np.uint8)
    rng = physical_box_to_index_range(reference, voxel_box_corners(lab, (0, 0, 0), np.asarray(lab.size_ijk) - 1))
    if rng is None or not lab.array.any():
        return Volume(out, reference.spacing, reference.origin, reference.direction.copy())
    lo, hi = rng
    if not smooth:
        size = hi - lo + 1
        origin = reference.physical_points(lo[None, :].astype(float))[0]
        sub = _resample_onto(lab, size, reference.spacing, origin, reference.direction, "nearest", 0)
        out[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = sub
        return Volume(out, reference.spacing, reference.origin, reference.direction.copy())
    values = [int(v) for v in np.flatnonzero(np.bincount(lab.array.ravel())[1:]) + 1]
    if device is not None:
        _paste_smooth_torch(lab, reference, values, lo, hi, out, device)
        return Volume(out, reference.spacing, reference.origin, reference.direction.copy())
    # Ascending values, each over the voxels it may reach: a larger value overwrites a smaller one.
    for v in values:
        mask = lab.array >= v
        ijk = nonzero_box(mask)[::-1]  # values come from the labels present: never empty
        box = physical_box_to_index_range(reference, voxel_box_corners(
            lab, [b.start for b in ijk], [b.stop - 1 for b in ijk]))
        if box is not None:
            _paste_region(lab.with_array(mask.astype(np.float32)), v, reference, *box, out)
    return Volume(out, reference.spacing, reference.origin, reference.direction.copy())


def _paste_region(mask: Volume, value: int, reference: Volume, lo, hi, out: np.ndarray) -> None:
    """``out[voxels lo..hi] = value`` where ``mask`` (0/1 float32), interpolated linearly onto
    ``reference``'s grid, is >= 0.5; in k slabs of at most ``SMOOTH_CHUNK_VOXELS``.

    A point interpolates to >= 0.5 only within half a source voxel of a 1, so ``lo..hi`` need
    only cover the voxel box of the mask's ones (their outer corners): the rest stays as it is."""
    plane = int((hi[0] - lo[0] + 1) * (hi[1] - lo[1] + 1))
    step = max(1, SMOOTH_CHUNK_VOXELS // max(plane, 1))
    for k0 in range(int(lo[2]), int(hi[2]) + 1, step):
        k1 = min(int(hi[2]), k0 + step - 1)
        c_lo = np.array([lo[0], lo[1], k0])
        size = np.array([hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, k1 - k0 + 1])
        origin = reference.physical_points(c_lo[None, :].astype(float))[0]
        f = _resample_onto(mask, size, reference.spacing, origin, reference.direction, "linear", 0.0)
        out[k0:k1 + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1][f >= 0.5] = value


def _paste_smooth_torch(lab: Volume, reference: Volume, values: list[int], lo, hi, out: np.ndarray, device) -> None:
    """The smooth paste-back of :func:`resample_labels_to_reference` on a torch device."""
    import torch

    from .resample_torch import resample_linear

    size = hi - lo + 1
    origin = reference.physical_points(lo[None, :].astype(float))[0]
    src = torch.from_numpy(np.ascontiguousarray(lab.array)).to(device)
    box = torch.zeros(tuple(int(s) for s in size[::-1]), dtype=torch.uint8, device=device)
    for v in values:
        f = resample_linear(src >= v, lab, size, reference.spacing, origin, reference.direction, 0.0)
        box[f >= 0.5] = v
    out[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = box.cpu().numpy()


def normalise(array: np.ndarray, intensity: dict) -> np.ndarray:
    """Clip to ``intensity["clip"]`` then ``(x - mean) / std``, as float32 (a new array)."""
    lo, hi = (float(v) for v in intensity["clip"])
    out = np.array(array, dtype=np.float32, copy=True)
    np.clip(out, lo, hi, out=out)
    out -= np.float32(intensity["mean"])
    out /= np.float32(intensity["std"])
    return out


# Backwards-compatible name used in docs/ARCHITECTURE.md's layout.
normalise_intensity = normalise


def crop_box(vol: Volume, lo_ijk, hi_ijk) -> Volume:
    """Sub-volume of voxels lo..hi (inclusive, (i, j, k)) with the matching origin (array is a view)."""
    lo = np.asarray(lo_ijk, int)
    hi = np.asarray(hi_ijk, int)
    arr = vol.array[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
    origin = vol.physical_points(lo[None, :].astype(float))[0]
    return Volume(arr, vol.spacing, tuple(origin), vol.direction.copy(), metadata=dict(vol.metadata))


def pad_to_multiple(array: np.ndarray, multiple, value: float = 0.0, minimum=None):
    """Pad the last len(multiple) axes at the end to multiples (and at least ``minimum``).

    Returns ``(padded, original_shape)``; crop with ``padded[..., :s0, :s1, :s2]``.
    """
    n = len(multiple)
    shape = array.shape[-n:]
    minimum = minimum or (1,) * n
    target = [max(int(np.ceil(s / m) * m), int(np.ceil(mn / m) * m)) for s, m, mn in zip(shape, multiple, minimum)]
    pads = [(0, 0)] * (array.ndim - n) + [(0, t - s) for s, t in zip(shape, target)]
    if all(p == (0, 0) for p in pads):
        return array, tuple(shape)
    return np.pad(array, pads, mode="constant", constant_values=value), tuple(shape)
