"""Seeded synthetic abdominal CT phantom with exact liver / tumour ground truth.

``make_phantom(seed, ...)`` returns ``(ct, label)``: int16 HU and uint8 labels
(0 background, 1 liver, 2 tumour) on the same grid. The anatomy
(``phantom_anatomy.Anatomy``) is built in physical LPS millimetres and then
sampled on the requested voxel grid, so the same seed shows the same body in
any orientation (LPS, RAS = flipped i and j, oblique), spacing or field of
view. The label is the voxel-wise evaluation of the same implicit liver and
lesion shapes that paint the CT, hence exact on that grid. The liver is on the
patient's RIGHT, i.e. at smaller LPS x than the body centre.
"""
from __future__ import annotations

import numpy as np

from .phantom_anatomy import PHASES, Anatomy
from .phantom_shapes import F32, Capsule, Grid, fourier, rotation
from ..engine.volume import Volume

ORIENTATIONS = ("LPS", "RAS", "oblique")
RAS_DIRECTION = np.diag([-1.0, -1.0, 1.0])
SLICE_THICKNESSES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)


def _geometry(seed, anat, shape_kji, spacing, orientation, fov):
    """Grid of the scan. All random numbers are drawn whatever the options, so
    e.g. the LPS and RAS versions of one seed cover the same physical box."""
    rng = np.random.default_rng([int(seed), 2])
    u = rng.uniform
    d_sxy, d_sz = u(0.6, 1.0), float(rng.choice(SLICE_THICKNESSES))
    fov_xy = (u(340, 360), u(270, 290))
    zlo, zhi = anat.liver_extent_z
    ext = zhi - zlo
    fov_z = u(min(max(150.0, ext + 30), 250.0), 250.0)
    d_orient = ORIENTATIONS[rng.choice(3, p=[0.4, 0.3, 0.3])]
    axis = rng.normal(size=3)
    angle = np.radians(u(3, 15))
    d_partial, side, frac = rng.random() < 0.3, rng.choice(["top", "bottom"]), u(0.25, 0.6)
    jitter = u(-1, 1, size=3)
    t_world = np.array([u(-20, 20), u(-30, 30), u(-350, 50)])

    orientation = d_orient if orientation in (None, "random") else orientation
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS} or 'random', got {orientation!r}")
    fov = ("partial" if d_partial else "full") if fov in (None, "random") else fov
    if fov not in ("full", "partial"):
        raise ValueError(f"fov must be 'full', 'partial' or 'random', got {fov!r}")
    if spacing is None:
        if shape_kji is None:
            spacing = (round(d_sxy, 3), round(d_sxy, 3), d_sz)
        else:
            sxy = max(fov_xy[0] / shape_kji[2], fov_xy[1] / shape_kji[1])
            spacing = (sxy, sxy, fov_z / shape_kji[0])
    spacing = tuple(float(s) for s in spacing)
    if shape_kji is None:
        shape_kji = (int(round(fov_z / spacing[2])), int(round(fov_xy[1] / spacing[1])), int(round(fov_xy[0] / spacing[0])))
    shape_kji = tuple(int(n) for n in shape_kji)
    span_z = shape_kji[0] * spacing[2]
    if fov == "full":
        cz = (zlo + zhi) / 2 + jitter[2] * max(0.0, span_z - ext - 20) / 4
        cut = None
    elif side == "bottom":
        cz, cut = zlo + frac * ext + span_z / 2, "bottom"
    else:
        cz, cut = zhi - frac * ext - span_z / 2, "top"
    centre = np.array([jitter[0] * 10, 5 + jitter[1] * 10, cz])
    direction = {"LPS": np.eye(3), "RAS": RAS_DIRECTION, "oblique": rotation(axis, angle)}[orientation]
    M = direction @ np.diag(spacing)
    origin_anat = centre - M @ ((np.array(shape_kji[::-1], float) - 1) / 2)
    info = {"orientation": orientation, "fov": fov, "fov_cut": cut,
            "oblique_angle_deg": float(np.degrees(angle)) if orientation == "oblique" else 0.0}
    return shape_kji, spacing, direction, origin_anat, t_world, info


def _chunks(sl, max_vox: int = 3_000_000):
    """Split a block along k so temporaries stay small (memory and cache)."""
    if sl is None:
        return
    per = max(1, max_vox // max(1, (sl[1].stop - sl[1].start) * (sl[2].stop - sl[2].start)))
    for k0 in range(sl[0].start, sl[0].stop, per):
        yield (slice(k0, min(k0 + per, sl[0].stop)), sl[1], sl[2])


def _paint(ct, lab, sl, mask, hu, label=None):
    np.copyto(ct[sl], hu, where=mask, casting="unsafe")
    if label is not None:
        np.copyto(lab[sl], np.uint8(label), where=mask)


def _organ(ct, lab, g, a, shape_lo_hi, fn, hu_fn, label=0, below=True):
    """Paint one abdominal organ: ``fn(x,y,z)->mask`` inside its bounding box."""
    for sl in _chunks(g.slices(*shape_lo_hi)):
        x, y, z = g.coords(sl)
        m = fn(x, y, z)
        if below:
            m = m & (z < a.dia.h(x, y) - F32(3.0)) & a.body.cavity(x, y)
        hu = hu_fn(x, y, z, m) if callable(hu_fn) else hu_fn
        _paint(ct, lab, sl, m, hu, label)


def _paint_body(ct, lab, g, a):
    hu = a.hu
    ty = a.body.ay * 1.05 + 8
    step = ct.shape[0] if g.aligned else max(1, 3_000_000 // (ct.shape[1] * ct.shape[2]))
    for k0 in range(0, ct.shape[0], step):
        sl = (slice(k0, min(k0 + step, ct.shape[0])), slice(0, ct.shape[1]), slice(0, ct.shape[2]))
        x, y, _ = g.coords(sl)
        d, fat = a.body.depth(x, y)
        out = np.full(np.broadcast_shapes(x.shape, y.shape), hu["air"], F32)
        table = (np.abs(x) < 210) & (((y > ty) & (y < ty + 3)) | ((y > ty + 14) & (y < ty + 17)))
        out[np.broadcast_to(table, out.shape)] = hu["table"]
        out[np.broadcast_to((y > ty + 3) & (y < ty + 14) & (np.abs(x) < 210), out.shape)] = -850
        out = np.where(d >= 0, F32(hu["skin"]), out)
        out = np.where(d >= 2, F32(hu["fat"]), out)
        out = np.where(d >= fat, F32(hu["muscle"]), out)
        out = np.where(d >= fat + F32(a.body.muscle), F32(hu["visceral_fat"]), out)
        ct[sl] = out


def _paint_thorax_and_skeleton(ct, lab, g, a):
    hu, b, dia = a.hu, a.body, a.dia
    big = 400.0
    # Lungs, heart and mediastinal fat above the diaphragm; the diaphragm muscle itself.
    for sl in _chunks(g.slices((-big, -big, a.h_min - 5), (big, big, 1e4))):
        x, y, z = g.coords(sl)
        h, cav = dia.h(x, y), b.cavity(x, y)
        above = (z > h + F32(4)) & cav
        _paint(ct, lab, sl, above, hu["lung"])
        med = ((x - F32(0.08 * b.aix)) / F32(0.3 * b.aix)) ** 2 + ((y - F32(0.1 * b.aiy)) / F32(0.9 * b.aiy)) ** 2 < 1
        _paint(ct, lab, sl, above & med, hu["visceral_fat"])
        _paint(ct, lab, sl, above & a.heart.inside(x, y, z), hu["heart"])
        _paint(ct, lab, sl, cav & (z > h - F32(3)) & (z <= h + F32(4)), hu["muscle"])
    # Paraspinal muscles, psoas, spine.
    yv, rv = a.yv, a.rv
    for sl in _chunks(g.slices((-70, yv - rv - 40, -1e4), (70, yv + rv + 70, 1e4))):
        x, y, z = g.coords(sl)
        ax_ = np.abs(x)
        inb = a.body.depth(x, y)[0] > 3
        _paint(ct, lab, sl, inb & (((ax_ - F32(32)) / F32(26)) ** 2 + ((y - F32(yv + rv + 25)) / F32(24)) ** 2 < 1), hu["muscle"])
        pr = np.clip(F32(-110) - z, 0, 150) * F32(0.12) + F32(4)
        _paint(ct, lab, sl, (z < -110) & ((ax_ - F32(rv + 14)) ** 2 + (y - F32(yv - 4)) ** 2 < pr * pr), hu["muscle"])
        r_body = np.sqrt(x * x + (y - F32(yv)) ** 2)
        disc = np.mod(z - F32(a.disc_phase), F32(a.disc_period)) < F32(a.disc_thick)
        _paint(ct, lab, sl, r_body < rv, np.where(disc, F32(hu["disc"]), F32(hu["cancellous"])))
        _paint(ct, lab, sl, (r_body < rv) & (r_body > rv - 2) & ~disc, hu["cortical"])
        yc = F32(yv + rv + 10)
        r_can = np.sqrt(x * x + (y - yc) ** 2)
        arch = ((r_can < 15) | ((ax_ < 4) & (y > yc) & (y < yc + 38)) | ((ax_ < 42) & (np.abs(y - yc + 2) < 5))) & ~disc
        _paint(ct, lab, sl, arch & inb, hu["cortical"] * 0.7)
        _paint(ct, lab, sl, r_can < 9, hu["csf"])
    # Ribs: bands inside the muscle wall, sloping down anteriorly, absent anteriorly low down.
    for sl in _chunks(g.slices((-big, -big, a.rib_bottom - 40), (big, big, 1e4))):
        x, y, z = g.coords(sl)
        d, fat = b.depth(x, y)
        band = (d > fat + F32(1.5)) & (d < fat + F32(1.5 + min(a.rib_thick, b.muscle - 3)))
        zz = z - F32(a.rib_slope) * y
        rib = band & (np.mod(zz - F32(a.rib_phase), F32(a.rib_period)) < F32(a.rib_thick)) & (zz > F32(a.rib_bottom))
        rib &= ~((np.abs(x) < F32(0.35 * b.aix)) & (y < 0) & (z < F32(a.dia.zl - 20)))
        _paint(ct, lab, sl, rib, hu["rib"])


def _paint_abdomen(ct, lab, g, a):
    hu = a.hu
    for cap in (a.aorta, a.ivc):
        kind = "aorta" if cap is a.aorta else "ivc"
        _organ(ct, lab, g, a, cap.bbox(), cap.inside, hu[kind], below=False)
    for cap, gas in a.bowel:
        _organ(ct, lab, g, a, cap.bbox(), cap.inside, hu["bowel_wall"])
        _organ(ct, lab, g, a, cap.bbox(), lambda x, y, z, c=cap: c.inside(x, y, z, extra=-3),
               hu["gas"] if gas else a.bowel_fluid)
    for cap in a.colon:
        _organ(ct, lab, g, a, cap.bbox(), cap.inside, hu["bowel_wall"])
        _organ(ct, lab, g, a, cap.bbox(), lambda x, y, z, c=cap: c.inside(x, y, z, extra=-3),
               lambda x, y, z, m: np.where(fourier(x, y, z, a.colon_modes) > 0.1, F32(hu["gas"]), F32(-40)))
    for cap in a.pancreas:
        _organ(ct, lab, g, a, cap.bbox(), cap.inside, hu["pancreas"])
    st = a.stomach
    _organ(ct, lab, g, a, st.bbox(), st.inside, hu["bowel_wall"])
    _organ(ct, lab, g, a, st.bbox(), lambda x, y, z: st.q(x, y, z) < 0.8,
           lambda x, y, z, m: np.where(y < F32(st.c[1] - 0.2 * st.r[1]), F32(hu["gas"]), F32(hu["fluid"])))
    for kid in a.kidneys:
        _organ(ct, lab, g, a, kid.bbox(), kid.inside,
               lambda x, y, z, m, k=kid: np.where(k.q(x, y, z) > 0.55, F32(hu["kidney_cortex"]), F32(hu["kidney_medulla"])))
        sinus = type(kid)(kid.c - np.sign(kid.c[0]) * (kid.R @ np.array([kid.r[0] * 0.45, 0, 0])), kid.r * [0.35, 0.3, 0.45], kid.R)
        _organ(ct, lab, g, a, sinus.bbox(), lambda x, y, z, s=sinus, k=kid: s.inside(x, y, z) & k.inside(x, y, z),
               hu["visceral_fat"])
    sp = a.spleen
    _organ(ct, lab, g, a, sp.bbox(), sp.inside,
           lambda x, y, z, m: F32(hu["spleen"]) + F32(20) * fourier(x, y, z, sp.modes))
    gb = a.gallbladder
    _organ(ct, lab, g, a, gb.bbox(), gb.inside, hu["bile"])


def _paint_liver(ct, lab, g, a):
    hu = a.hu
    for sl in _chunks(g.slices(*a.liver_bbox())):
        x, y, z = g.coords(sl)
        m, f = a.liver_inside(x, y, z, return_field=True)
        _paint(ct, lab, sl, m, F32(hu["liver"]) + F32(15) * f, 1)
    for cap, kind in a.vessels:
        vsl = g.slices(*cap.bbox())
        if vsl is not None:
            vx, vy, vz = g.coords(vsl)
            _paint(ct, lab, vsl, cap.inside(vx, vy, vz) & (lab[vsl] == 1), hu[kind])
    for le in a.lesions:
        e = a.lesion_shape(le)
        lsl = g.slices(*e.bbox(pad=2))
        if lsl is None:
            continue
        lx, ly, lz = g.coords(lsl)
        q = e.q(lx, ly, lz)
        m = (q < 1) & (lab[lsl] >= 1)
        val = np.full(q.shape, le["hu"], F32)
        if le["rim"]:
            val = np.where(q > 0.7, F32(hu["liver"] + 15), val)
        _paint(ct, lab, lsl, m, val, 2)


def _finish(ct, rng, sigma):
    """Add white noise, then mild Gaussian blur (partial volume); the blur's
    noise reduction is compensated so the final noise SD is ``sigma``."""
    from scipy.ndimage import gaussian_filter

    s = (0.4, 0.6, 0.6)
    red = 1.0
    for si in s:
        w = np.exp(-0.5 * (np.arange(-2, 3) / si) ** 2)
        w /= w.sum()
        red *= float((w * w).sum())
    noise = rng.standard_normal(ct.shape, dtype=F32)
    noise *= F32(sigma / np.sqrt(red))
    ct += noise
    del noise
    out = gaussian_filter(ct, s, truncate=2.0 / 0.6, mode="nearest")
    np.rint(out, out=out)
    np.clip(out, -1024, 3071, out=out)
    return out.astype(np.int16)


def make_phantom(seed: int, shape_kji=None, spacing=None, orientation="random", n_lesions=None, fov="random",
                 contrast=None, noise=None) -> tuple[Volume, Volume]:
    """Synthetic abdominal CT and its exact label map (0 bg, 1 liver, 2 tumour).

    seed: everything derives from it (same seed -> identical arrays).
    shape_kji / spacing (i, j, k mm): default spacing 0.6-1.0 mm in-plane,
    1-5 mm slices; default shape covers ~350x280 mm and 150-250 mm in z. If
    only the shape is given, the spacing is chosen to cover that field of view.
    orientation: "LPS" | "RAS" (i, j flipped) | "oblique" (3-15 deg) | "random".
    n_lesions: 0-6 by default (5-40 mm). fov: "full" | "partial" (liver top or
    bottom cut off) | "random". contrast: one of PHASES or None (random).
    noise: Gaussian noise SD in HU (default 5-25).
    """
    anat = Anatomy(seed, contrast=contrast, n_lesions=n_lesions)
    anat.build_liver_contents()
    shape_kji, spacing, direction, origin_anat, t_world, info = _geometry(seed, anat, shape_kji, spacing, orientation, fov)
    g = Grid(shape_kji, spacing, origin_anat, direction)
    ct = np.empty(shape_kji, F32)
    lab = np.zeros(shape_kji, np.uint8)
    _paint_body(ct, lab, g, anat)
    _paint_thorax_and_skeleton(ct, lab, g, anat)
    _paint_abdomen(ct, lab, g, anat)
    _paint_liver(ct, lab, g, anat)
    sigma = anat.noise_draw if noise is None else float(noise)
    ct16 = _finish(ct, np.random.default_rng([int(seed), 3]), sigma)
    origin = tuple(origin_anat + t_world)
    w = lambda p: [float(v) for v in np.asarray(p, float) + t_world]  # noqa: E731
    meta = {
        "seed": int(seed), **info, "contrast": anat.phase, "noise_sd": sigma, "liver_hu": anat.hu["liver"],
        "body_centre_lps": w((0.0, 0.0, 0.0))[:2], "liver_extent_z_lps": [anat.liver_extent_z[0] + t_world[2],
                                                                          anat.liver_extent_z[1] + t_world[2]],
        "n_lesions": len(anat.lesions),
        "lesions": [{"centre_lps": w(le["centre"]), "diameter_mm": float(le["diameter_mm"]), "kind": le["kind"],
                     "hu": le["hu"]} for le in anat.lesions],
        "organs_lps": {"spleen": w(anat.spleen.c), "kidney_right": w(anat.kidneys[0].c),
                       "kidney_left": w(anat.kidneys[1].c), "gallbladder": w(anat.gallbladder.c),
                       "stomach": w(anat.stomach.c)},
        "organ_hu": {k: float(anat.hu[k]) for k in ("liver", "spleen", "kidney_cortex", "kidney_medulla", "pancreas")},
    }
    ct_vol = Volume(ct16, spacing, origin, direction.copy(), metadata={"phantom": meta})
    lab_vol = Volume(lab, spacing, origin, direction.copy(), metadata={"phantom": meta})
    return ct_vol, lab_vol


__all__ = ["make_phantom", "PHASES", "ORIENTATIONS"]
