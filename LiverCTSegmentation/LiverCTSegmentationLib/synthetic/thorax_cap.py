"""A heart and lower thorax painted above the liver dome of an anatomy label map.

Why: the expert anatomy maps stop just above the liver dome, so no CT synthesised from them
holds a heart, and a model trained on them calls the heart above the dome "liver". This module
adds a cap of new slices on the map's superior side: the body outline and the spine continued
upwards from the top slice, ribs in the chest wall, lungs, a heart (an oblique ellipsoid of about
12 x 9 x 9 cm, left of the midline and anterior) whose flattened inferior surface rests on the
liver's top a few millimetres of diaphragm above it, and mediastinal fat around it. The original
voxels are kept unchanged at their positions; only slices are added.

Orientation comes from the direction matrix (LPS columns of the i, j, k axes), never assumed:
the work is done on a canonical view (z superior, y posterior, x patient left) and turned back.
Used by ``training/anatomy_data.py`` (``data.synthetic.thorax``); the engine never imports it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from ..engine.volume import Volume

log = logging.getLogger(__name__)

NEW_CLASSES = ("lung", "heart", "mediastinum")  # given a value when the names table lacks them
LIVER_NAMES = ("liver", "liver_tumor", "liver_vessel", "liver_cyst")
NOT_ORGAN = ("outside_body", "body_unlabelled", "bone", "lung")  # everything else is a floor the chest rests on
EXTRUDED_VESSELS = ("artery", "vena_cava", "venous_system")  # aorta and cava continue through the diaphragm

Axis = tuple[int, int]  # (KJI array axis, +1 if the index grows towards that side, else -1)


@dataclass(frozen=True)
class ThoraxParams:
    cap_mm: tuple[float, float] = (40.0, 90.0)  # height of the added slab
    max_gap_mm: float = 15.0  # liver top further below the map's top: the thorax is already in the map
    heart_mm: tuple[float, float, float] = (120.0, 90.0, 90.0)  # long axis, two short axes (diameters)
    heart_scale: tuple[float, float] = (0.85, 1.15)  # per axis
    diaphragm_mm: tuple[float, float] = (3.0, 8.0)  # soft tissue between an organ's top and heart or lung
    chest_wall_mm: tuple[float, float] = (12.0, 25.0)  # skin to lung


def patient_axes(direction) -> tuple[Axis, Axis, Axis]:
    """The array axes pointing to the patient's Left, Posterior and Superior (LPS ``direction``
    columns = i, j, k); an oblique grid gets the nearest axis for each (the engine's own choice)."""
    from ..engine.preprocess import canonical_axes

    cols, signs = canonical_axes(np.asarray(direction, float).reshape(3, 3))
    return tuple((2 - c, 1 if s > 0 else -1) for c, s in zip(cols, signs))  # column i is array axis 2 (KJI)


def superior_axis(direction) -> Axis:
    return patient_axes(direction)[2]


def thorax_names(names: Mapping[int, str]) -> dict[int, str]:
    """``names`` plus a new value (after the largest) for each of ``NEW_CLASSES`` it lacks."""
    out = {int(v): str(n) for v, n in names.items()}
    for n in NEW_CLASSES:
        if n not in out.values():
            out[max(out, default=0) + 1] = n
    if max(out) > 255:
        raise ValueError("thorax classes do not fit a uint8 label map")
    return out


def _canonical(axes: tuple[Axis, Axis, Axis]) -> tuple[tuple[int, int, int], tuple[int, ...]]:
    """Transpose order and flipped axes giving a [z superior, y posterior, x left] view."""
    ordered = (axes[2], axes[1], axes[0])
    return tuple(a for a, _ in ordered), tuple(i for i, (_, s) in enumerate(ordered) if s < 0)


def _skip_reason(can: np.ndarray, value: Mapping[str, int], sz: float, params: ThoraxParams) -> Optional[str]:
    if "body_unlabelled" not in value:
        return "no body_unlabelled class"
    liver = np.isin(can, [value[n] for n in LIVER_NAMES if n in value])
    zs = np.flatnonzero(liver.any(axis=(1, 2)))
    if not zs.size:
        return "no liver"
    if zs[-1] == can.shape[0] - 1:
        return "the liver touches the top slice (dome not contained)"
    gap = (can.shape[0] - 1 - zs[-1]) * sz
    if gap > params.max_gap_mm:
        return f"the liver's top lies {gap:.1f} mm below the map's top (> {params.max_gap_mm} mm)"
    if not (can[-1] != value.get("outside_body", 0)).any():
        return "no body in the top slice"
    return None


def add_thorax_cap(labels: np.ndarray, names: Mapping[int, str], spacing_kji, direction,
                   rng: np.random.Generator, params: ThoraxParams = ThoraxParams(),
                   log_name: str = "") -> tuple[np.ndarray, dict[int, str], int]:
    """``(labels with a thorax cap, names with NEW_CLASSES, slices added)`` for a KJI label map.

    ``direction`` (LPS columns of i, j, k) says which array side is superior; the new slices go
    there and ``labels`` is embedded unchanged. Skipped (``labels`` returned as is, 0 slices,
    logged) when the map has no liver, its liver touches the top slice, or the liver's top lies
    more than ``params.max_gap_mm`` below the top."""
    out_names = thorax_names(names)
    value = {n: v for v, n in out_names.items()}
    perm, flips = _canonical(patient_axes(direction))
    can = np.transpose(labels, perm)
    can = np.flip(can, flips) if flips else can
    sp = np.asarray(spacing_kji, float)[list(perm)]
    reason = _skip_reason(can, value, float(sp[0]), params)
    if reason:
        log.info("thorax cap skipped%s: %s", f" for {log_name}" if log_name else "", reason)
        return labels, out_names, 0
    ext = np.concatenate([can, _paint_cap(can, value, sp, rng, params)], axis=0)
    ext = np.flip(ext, flips) if flips else ext
    return np.ascontiguousarray(np.transpose(ext, np.argsort(perm))), out_names, ext.shape[0] - can.shape[0]


def add_thorax_cap_volume(vol: Volume, names: Mapping[int, str], rng: np.random.Generator,
                          params: ThoraxParams = ThoraxParams(),
                          log_name: str = "") -> tuple[Volume, dict[int, str], int]:
    """:func:`add_thorax_cap` on a Volume: when the superior side is the low index, the origin
    moves up by the added slices so every original voxel keeps its physical position."""
    arr, out_names, n = add_thorax_cap(vol.array, names, tuple(vol.spacing)[::-1], vol.direction, rng, params,
                                       log_name)
    if not n:
        return vol, out_names, 0
    axis, sign = superior_axis(vol.direction)
    origin = np.asarray(vol.origin, float)
    if sign < 0:
        c = 2 - axis
        origin = origin - n * vol.spacing[c] * np.asarray(vol.direction, float)[:, c]
    return Volume(arr, vol.spacing, tuple(origin), np.array(vol.direction, float), dict(vol.metadata)), out_names, n


def _largest_posterior_midline(bone2d: np.ndarray, cy: float, cx: float, sy: float, sx: float) -> np.ndarray:
    """The spine in the top slice: the largest bone component behind the body's centre, near its midline."""
    from scipy.ndimage import label as cc_label

    comp, n = cc_label(bone2d)
    best, best_size = np.zeros_like(bone2d), 0
    for c in range(1, n + 1):
        m = comp == c
        y, x = np.nonzero(m)
        if y.mean() * sy > cy and abs(x.mean() * sx - cx) < 40.0 and m.sum() > best_size:
            best, best_size = m, int(m.sum())
    return best


def _paint_cap(can: np.ndarray, value: Mapping[str, int], sp: np.ndarray, rng: np.random.Generator,
               params: ThoraxParams) -> np.ndarray:
    """The new slices (canonical view) above ``can``."""
    from scipy.ndimage import binary_dilation, distance_transform_edt

    nz, ny, nx = can.shape
    sz, sy, sx = (float(s) for s in sp)
    outside, body_v = value.get("outside_body", 0), value["body_unlabelled"]
    top = can[-1]
    body2d = top != outside
    yy, xx = np.indices((ny, nx), dtype=np.float32)
    ymm, xmm = yy * sy, xx * sx
    cy, cx = float(ymm[body2d].mean()), float(xmm[body2d].mean())

    # every draw up front, in a fixed order: the same seed gives the same cap
    n_new = max(1, int(round(rng.uniform(*params.cap_mm) / sz)))
    taper = rng.uniform(-0.06, 0.03)  # the chest's cross-section over the cap height
    wall = rng.uniform(*params.chest_wall_mm)
    gap = rng.uniform(*params.diaphragm_mm)
    radii = np.asarray(params.heart_mm) / 2.0 * rng.uniform(*params.heart_scale, size=3)
    azimuth, elevation = np.radians(rng.uniform(35.0, 55.0)), np.radians(rng.uniform(15.0, 35.0))
    x_off, y_extra, z_frac = rng.uniform(15.0, 40.0), rng.uniform(0.0, 8.0), rng.uniform(0.45, 0.8)
    peri, band = rng.uniform(2.0, 6.0), rng.uniform(25.0, 45.0)
    rib_period, rib_t, rib_w = rng.uniform(22.0, 28.0), rng.uniform(7.0, 10.0), rng.uniform(5.0, 8.0)
    rib_slope, rib_phase = rng.uniform(25.0, 45.0), rng.uniform(0.0, 30.0)

    # the floor: per column the first slice heart and lung may occupy, a diaphragm above any organ
    organ = ~np.isin(can, [value[n] for n in NOT_ORGAN if n in value])
    has = organ.any(axis=0)
    organ_top = np.where(has, nz - 1 - np.argmax(organ[::-1], axis=0), -10 ** 6)
    floor = organ_top + 1 + int(np.ceil(gap / sz))

    bone_v = value.get("bone")
    spine = _largest_posterior_midline(top == bone_v, cy, cx, sy, sx) if bone_v is not None \
        else np.zeros_like(body2d)
    mid_x = float(xmm[spine].mean()) if spine.any() else cx
    spine_front = float(ymm[spine].min()) if spine.any() else None
    vessels = np.isin(top, [value[n] for n in EXTRUDED_VESSELS if n in value])
    spine_zone = binary_dilation(spine, iterations=max(1, int(round(4.0 / sy))))

    # heart: long axis from base (right, posterior, superior) to apex (left, anterior, inferior)
    u = np.array([-np.sin(elevation), -np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth)])
    v = np.cross(u, [1.0, 0.0, 0.0])
    v /= np.linalg.norm(v)
    w = np.cross(u, v)
    rot = np.stack([u, v, w])  # rows: heart axes in (z, y, x)
    quad = rot.T @ np.diag(1.0 / radii ** 2) @ rot  # x^T quad x <= 1 inside
    half = np.sqrt(np.diag(np.linalg.inv(quad)))  # half extents along z, y, x
    chord = 1.0 / np.sqrt(quad[0, 0])  # half the vertical chord through the centre
    depth0 = distance_transform_edt(np.pad(body2d, 1), sampling=(sy, sx))[1:-1, 1:-1]
    hx = mid_x + x_off
    ix = int(np.clip(round(hx / sx), 0, nx - 1))
    front = np.flatnonzero(depth0[:, ix] > wall)
    y_ant = float(front[0]) * sy if front.size else cy - half[1]
    hy = y_ant + half[1] + y_extra
    if spine_front is not None:
        hy = min(hy, spine_front - half[1] - 5.0)  # room for the aorta and oesophagus
    iy = int(np.clip(round(hy / sy), 0, ny - 1))
    hz = max(nz, int(floor[iy, ix])) * sz + z_frac * chord  # the lower part dips below the floor: cut flat

    cap = np.full((n_new, ny, nx), outside, dtype=can.dtype)
    for t in range(n_new):
        z = nz + t
        f = 1.0 + taper * (t + 1) / n_new
        sy_i = np.rint(cy / sy + (yy - cy / sy) / f).astype(int)
        sx_i = np.rint(cx / sx + (xx - cx / sx) / f).astype(int)
        ok = (sy_i >= 0) & (sy_i < ny) & (sx_i >= 0) & (sx_i < nx)
        body = np.zeros_like(body2d)
        body[ok] = body2d[sy_i[ok], sx_i[ok]]
        body |= spine
        depth = distance_transform_edt(np.pad(body, 1), sampling=(sy, sx))[1:-1, 1:-1]
        chest = (depth > wall) & (z >= floor) & ~spine_zone
        d = np.stack([np.full_like(ymm, z * sz - hz), ymm - hy, xmm - hx])
        heart = chest & (np.einsum("aij,ab,bij->ij", d, quad, d) <= 1.0)
        shell = np.einsum("aij,ab,bij->ij", d, quad / (1.0 + peri / radii.min()) ** 2, d) <= 1.0
        before_spine = (ymm < spine_front) if spine_front is not None else np.ones_like(body)
        central = (np.abs(xmm - mid_x) < band / 2.0) & before_spine
        sl = cap[t]
        sl[body] = body_v
        sl[chest] = value["lung"]
        sl[chest & (shell | central) & ~heart] = value["mediastinum"]
        sl[heart] = value["heart"]
        sl[vessels & body & ~heart] = top[vessels & body & ~heart]
        if bone_v is not None:
            r = np.hypot(ymm - cy, xmm - cx)
            theta = np.arccos(np.clip((ymm - cy) / np.maximum(r, 1e-6), -1.0, 1.0)) / np.pi  # 0 back, 1 front
            rib = ((depth > wall - 1.0 - rib_w) & (depth <= wall - 1.0) & (theta < 0.85)
                   & (np.mod(z * sz + rib_slope * theta + rib_phase, rib_period) < rib_t))
            sl[rib & body] = bone_v
            sl[spine] = bone_v
    return cap
