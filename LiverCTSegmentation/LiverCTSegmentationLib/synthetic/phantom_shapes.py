"""Geometry helpers for the synthetic CT phantom (see ``phantom.py``).

Anatomy is described by implicit functions of *physical* coordinates (mm, in
an anatomy frame that is LPS-aligned: +x patient left, +y posterior,
+z superior). ``Grid`` samples those functions on any voxel grid (any spacing,
flipped or oblique direction) and only inside each organ's bounding box, which
keeps generation fast. On axis-aligned grids the coordinates are returned as
broadcastable 1-D arrays (x varies along i only, ...), so functions of (x, y)
cost a single 2-D slice instead of a full volume.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32


class Grid:
    """A voxel grid expressed in the anatomy frame (origin already shifted)."""

    def __init__(self, shape_kji, spacing, origin, direction) -> None:
        self.shape = tuple(int(n) for n in shape_kji)
        self.M = np.asarray(direction, float) @ np.diag(spacing)
        self.Minv = np.linalg.inv(self.M)
        self.o = np.asarray(origin, float)
        d = np.asarray(direction, float)
        self.aligned = bool(np.allclose(d, np.diag(np.diag(d)), atol=1e-9))

    def slices(self, lo, hi):
        """Index-space block (k, j, i slices) covering the physical box [lo, hi], or None."""
        lo = np.maximum(np.asarray(lo, float), -1e4)
        hi = np.minimum(np.asarray(hi, float), 1e4)
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        ijk = (corners - self.o) @ self.Minv.T
        lo_i = np.floor(ijk.min(0)).astype(int) - 1
        hi_i = np.ceil(ijk.max(0)).astype(int) + 2
        n_ijk = self.shape[::-1]
        lo_i = np.clip(lo_i, 0, n_ijk)
        hi_i = np.clip(hi_i, 0, n_ijk)
        if np.any(hi_i <= lo_i):
            return None
        return (slice(lo_i[2], hi_i[2]), slice(lo_i[1], hi_i[1]), slice(lo_i[0], hi_i[0]))

    def full(self):
        return tuple(slice(0, n) for n in self.shape)

    def coords(self, sl):
        """x, y, z (float32) of the voxel centres of block ``sl``, broadcastable to its shape."""
        k = np.arange(sl[0].start, sl[0].stop, dtype=np.float64)
        j = np.arange(sl[1].start, sl[1].stop, dtype=np.float64)
        i = np.arange(sl[2].start, sl[2].stop, dtype=np.float64)
        M, o = self.M, self.o
        if self.aligned:
            x = (o[0] + M[0, 0] * i).astype(F32)[None, None, :]
            y = (o[1] + M[1, 1] * j).astype(F32)[None, :, None]
            z = (o[2] + M[2, 2] * k).astype(F32)[:, None, None]
            return x, y, z
        out = []
        for r in range(3):
            a = (M[r, 0] * i).astype(F32)[None, None, :]
            b = (M[r, 1] * j).astype(F32)[None, :, None]
            c = (o[r] + M[r, 2] * k).astype(F32)[:, None, None]
            out.append((c + b) + a)
        return tuple(out)


def rotation(axis, angle_rad: float) -> np.ndarray:
    """Rotation matrix about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * K + (1 - np.cos(angle_rad)) * K @ K


def euler(rz=0.0, ry=0.0, rx=0.0) -> np.ndarray:
    """Rotation from small angles in degrees about z, then y, then x."""
    r = np.radians([rz, ry, rx])
    return rotation((0, 0, 1), r[0]) @ rotation((0, 1, 0), r[1]) @ rotation((1, 0, 0), r[2])


class Ellipsoid:
    """q(p) = |R^T (p - c) / radii|^2 (< 1 inside), optionally perturbed."""

    def __init__(self, centre, radii, R=None, modes=None) -> None:
        self.c = np.asarray(centre, float)
        self.r = np.asarray(radii, float)
        self.R = np.eye(3) if R is None else np.asarray(R, float)
        self.modes = modes  # list of (k(3), amplitude, phase)

    def bbox(self, pad: float = 0.0, slack: float = 0.0):
        # Half-extent of a rotated ellipsoid along each world axis; a perturbation of
        # total amplitude A can push the surface out by sqrt(1 + A).
        amp = slack + (sum(m[1] for m in self.modes) if self.modes else 0.0)
        ext = np.sqrt(((self.R * self.r[None, :]) ** 2).sum(1)) * np.sqrt(1.0 + amp) + pad
        return self.c - ext, self.c + ext

    def q(self, x, y, z):
        dx, dy, dz = x - F32(self.c[0]), y - F32(self.c[1]), z - F32(self.c[2])
        q = None
        for a in range(3):
            u = (F32(self.R[0, a] / self.r[a]) * dx + F32(self.R[1, a] / self.r[a]) * dy) + F32(self.R[2, a] / self.r[a]) * dz
            q = u * u if q is None else q + u * u
        if self.modes:
            q = q + fourier(x, y, z, self.modes)
        return q

    def inside(self, x, y, z):
        return self.q(x, y, z) < 1.0


def random_modes(rng: np.random.Generator, n: int, wavelength=(50.0, 150.0), amplitude=(0.04, 0.12)):
    modes = []
    for _ in range(n):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        k = d * 2 * np.pi / rng.uniform(*wavelength)
        modes.append((k, rng.uniform(*amplitude), rng.uniform(0, 2 * np.pi)))
    return modes


def fourier(x, y, z, modes):
    f = None
    for k, a, ph in modes:
        arg = (F32(k[0]) * x + F32(k[1]) * y) + (F32(k[2]) * z + F32(ph))
        t = F32(a) * np.cos(arg)
        f = t if f is None else f + t
    return f


class Capsule:
    """Points within ``radius`` of segment a-b (a tube with round ends)."""

    def __init__(self, a, b, radius: float) -> None:
        self.a = np.asarray(a, float)
        self.b = np.asarray(b, float)
        self.radius = float(radius)

    def bbox(self, pad: float = 0.0):
        r = self.radius + pad
        return np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r

    def d2(self, x, y, z):
        ab = self.b - self.a
        L2 = max(float(ab @ ab), 1e-9)
        px, py, pz = x - F32(self.a[0]), y - F32(self.a[1]), z - F32(self.a[2])
        t = (px * F32(ab[0] / L2) + py * F32(ab[1] / L2)) + pz * F32(ab[2] / L2)
        t = np.clip(t, 0, 1)
        ex, ey, ez = px - t * F32(ab[0]), py - t * F32(ab[1]), pz - t * F32(ab[2])
        return ex * ex + ey * ey + ez * ez

    def inside(self, x, y, z, extra: float = 0.0):
        return self.d2(x, y, z) < F32((self.radius + extra) ** 2)


class BodyOutline:
    """Axial body outline: a superellipse (flatter back) with a wavy perimeter."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.ax = rng.uniform(140, 160)
        self.ay = rng.uniform(100, 116)
        self.harm = [(n, rng.uniform(0, 0.02), rng.uniform(0, 2 * np.pi)) for n in range(2, 7)]
        self.fat = rng.uniform(6, 26)
        self.fat_mod = rng.uniform(0.1, 0.4)
        self.muscle = rng.uniform(12, 17)
        # Inner (abdominal cavity) semi-axes used to place organs.
        self.aix = self.ax - self.fat * (1 + self.fat_mod) - self.muscle
        self.aiy = self.ay - self.fat * (1 - self.fat_mod) - self.muscle

    LUT_HALF, LUT_STEP = 320.0, 0.5

    def depth(self, x, y):
        """Signed depth below the skin in mm (negative outside), and the fat thickness there.

        Looked up (nearest, 0.5 mm) in a 2-D table: much cheaper than the
        trigonometry on 3-D oblique blocks, and the same function everywhere."""
        if np.broadcast(x, y).size <= 1_000_000:
            return self._depth_exact(x, y)
        if not hasattr(self, "_lut"):
            a = np.arange(-self.LUT_HALF, self.LUT_HALF + self.LUT_STEP / 2, self.LUT_STEP, dtype=F32)
            self._lut = self._depth_exact(a[None, :], a[:, None])
        n = self._lut[0].shape[0] - 1
        ix = np.clip((x + F32(self.LUT_HALF + self.LUT_STEP / 2)) * F32(1 / self.LUT_STEP), 0, n).astype(np.int32)
        iy = np.clip((y + F32(self.LUT_HALF + self.LUT_STEP / 2)) * F32(1 / self.LUT_STEP), 0, n).astype(np.int32)
        return self._lut[0][iy, ix], self._lut[1][iy, ix]

    def _depth_exact(self, x, y):
        r = np.sqrt(x * x + y * y)
        rr = np.sqrt((x + F32(1e-3)) ** 2 + y * y)
        c, s = (x + F32(1e-3)) / rr, y / rr
        p = np.where(s > 0, F32(2.6), F32(2.0))
        R = (np.abs(c / F32(self.ax)) ** p + np.abs(s / F32(self.ay)) ** p) ** (-1 / p)
        theta = np.arctan2(y, x)
        wav = 1.0
        for n, a, ph in self.harm:
            wav = wav + F32(a) * np.cos(F32(n) * theta + F32(ph))
        fat = F32(self.fat) * (1 + F32(self.fat_mod) * (c * c - s * s))
        d = (R * wav - r).astype(F32)
        d[r > 300] = -100.0  # outside the table: plainly outside the body
        return d, fat.astype(F32)

    def cavity(self, x, y, margin: float = 0.0):
        d, fat = self.depth(x, y)
        return d > fat + F32(self.muscle + margin)


class Diaphragm:
    """Height z = h(x, y) of the diaphragm: two domes, the right one higher."""

    def __init__(self, rng: np.random.Generator, aix: float, aiy: float) -> None:
        self.zr = 4.0
        self.zl = 4.0 - rng.uniform(10, 25)
        self.xr, self.xl = -0.45 * aix, 0.45 * aix
        self.cr, self.cl = rng.uniform(0.005, 0.008), rng.uniform(0.005, 0.008)
        self.tilt = rng.uniform(0.1, 0.25)  # anterior part higher than posterior

    def h(self, x, y):
        yy = F32(0.9) * y * y
        dr = F32(self.zr) - F32(self.cr) * ((x - F32(self.xr)) ** 2 + yy)
        dl = F32(self.zl) - F32(self.cl) * ((x - F32(self.xl)) ** 2 + yy)
        return np.maximum(dr, dl) - F32(self.tilt) * y
