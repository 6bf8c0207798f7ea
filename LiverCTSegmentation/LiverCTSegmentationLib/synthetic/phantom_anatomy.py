"""Random abdominal anatomy for the phantom, in an LPS-aligned anatomy frame (mm).

Frame: +x = patient LEFT, +y = POSTERIOR, +z = SUPERIOR (LPS); the body axis is
x = y = 0 and the right diaphragm dome (liver top) is at z ~ 0. The liver is on
the patient's RIGHT, i.e. at negative x. Everything here depends only on the
seed (never on the voxel grid), so one seed gives the same anatomy in every
orientation, spacing and field of view.
"""
from __future__ import annotations

import numpy as np

from .phantom_shapes import F32, BodyOutline, Capsule, Diaphragm, Ellipsoid, euler, fourier, random_modes

PHASES = ("native", "arterial", "portal", "delayed")


def contrast_table(rng: np.random.Generator, phase: str) -> dict:
    """HU of every tissue for one contrast phase (liver 50-140 HU)."""
    u = rng.uniform
    liver = {"native": u(50, 65), "arterial": u(65, 85), "portal": u(100, 135), "delayed": u(85, 105)}[phase]
    hu = {
        "liver": liver, "air": -1000.0, "fat": u(-110, -90), "visceral_fat": u(-100, -80), "muscle": u(42, 58),
        "skin": u(10, 40), "lung": u(-880, -820), "gas": u(-1000, -940), "fluid": u(0, 20), "bile": u(0, 20),
        "cancellous": u(180, 280), "cortical": u(600, 950), "disc": u(80, 100), "csf": u(5, 15),
        "rib": u(450, 800), "table": u(150, 300),
    }
    if phase == "native":
        hu.update(spleen=liver - u(2, 12), kidney_cortex=u(30, 40), kidney_medulla=u(25, 35), aorta=u(35, 50),
                  ivc=u(35, 50), portal=liver + u(8, 15), hepatic=liver + u(5, 12), heart=u(35, 50),
                  pancreas=u(35, 50), bowel_wall=u(35, 50))
    elif phase == "arterial":
        hu.update(spleen=liver + u(15, 40), kidney_cortex=liver + u(60, 100), kidney_medulla=liver - u(0, 15),
                  aorta=u(250, 350), ivc=u(60, 90), portal=liver + u(40, 70), hepatic=liver + u(5, 15),
                  heart=u(180, 280), pancreas=liver + u(20, 40), bowel_wall=u(60, 90))
    elif phase == "portal":
        hu.update(spleen=liver + u(-10, 15), kidney_cortex=liver + u(20, 50), kidney_medulla=liver + u(0, 30),
                  aorta=u(150, 200), ivc=u(120, 160), portal=liver + u(40, 70), hepatic=liver + u(30, 60),
                  heart=u(140, 190), pancreas=liver - u(10, 25), bowel_wall=u(70, 100))
    else:
        hu.update(spleen=liver + u(-10, 5), kidney_cortex=liver + u(20, 60), kidney_medulla=liver + u(20, 60),
                  aorta=u(110, 130), ivc=u(100, 120), portal=liver + u(10, 25), hepatic=liver + u(10, 20),
                  heart=u(100, 130), pancreas=liver - u(15, 30), bowel_wall=u(50, 70))
    return hu


class Anatomy:
    def __init__(self, seed: int, contrast=None, n_lesions=None) -> None:
        rng = np.random.default_rng([int(seed), 1])
        u = rng.uniform
        self.body = b = BodyOutline(rng)
        aix, aiy = b.aix, b.aiy
        self.dia = Diaphragm(rng, aix, aiy)
        zl = self.dia.zl
        phase = PHASES[rng.choice(4, p=[0.15, 0.2, 0.5, 0.15])]
        self.phase = contrast if contrast is not None else phase
        if self.phase not in PHASES:
            raise ValueError(f"contrast must be one of {PHASES} or None, got {contrast!r}")
        self.hu = contrast_table(rng, self.phase)
        # Spine and great vessels (vertical).
        self.rv = u(15, 20)
        self.yv = 0.55 * aiy + 0.4 * self.rv
        self.disc_period, self.disc_thick, self.disc_phase = u(27, 33), u(6, 9), u(0, 30)
        ax_x, ax_y = u(12, 22), self.yv - self.rv - u(8, 14)
        self.aorta = Capsule((ax_x, ax_y, -1e4), (ax_x, ax_y, 1e4), u(9, 13))
        iv_x, iv_y = -u(18, 28), self.yv - self.rv - u(10, 18)
        self.ivc = Capsule((iv_x, iv_y, -1e4), (iv_x, iv_y, 25.0), u(9, 12))
        # Liver: union of deformed lobes, cut by diaphragm, cavity, IVC, gallbladder.
        j = lambda s=8.0: u(-s, s)  # noqa: E731
        s = lambda: u(0.85, 1.15)  # noqa: E731
        lobes = [
            Ellipsoid((-0.42 * aix + j(), 0.05 * aiy + j(), -75 + j()), (0.55 * aix * s(), 0.95 * aiy * s(), 88 * s()),
                      euler(u(-10, 10), u(-8, 8), u(-8, 8))),
            Ellipsoid((0.12 * aix + j(), -0.45 * aiy + j(), -35 + j()), (0.5 * aix * s(), 0.42 * aiy * s(), 34 * s()),
                      euler(u(-20, 20), u(-10, 10), 0)),
            Ellipsoid((iv_x + 10, iv_y - 5, -55 + j()), (25 * s(), 20 * s(), 35 * s())),
        ]
        if rng.random() < 0.4:  # Riedel-like inferior tongue
            lobes.append(Ellipsoid((-0.55 * aix, 0.1 * aiy, -150 + j()), (35 * s(), 45 * s(), 45 * s())))
        self.lobes = lobes
        self.liver_modes = random_modes(rng, 5, (60, 160), (0.05, 0.12))
        self.gallbladder = Ellipsoid((-0.22 * aix + j(5), -0.5 * aiy + j(5), -110 + j()), (16 * s(), 14 * s(), 35 * s()),
                                     euler(u(-20, 20), 0, u(20, 40)))
        # Confounders (liver-like HU), all below the diaphragm.
        self.spleen = Ellipsoid((0.7 * aix + j(5), 0.42 * aiy + j(5), zl - 60 + j()),
                                (0.22 * aix * s(), 0.42 * aiy * s(), 50 * s()), euler(u(20, 45), 0, 0),
                                random_modes(rng, 4, (50, 120), (0.05, 0.12)))
        ky = 0.5 * aiy + j(5)
        self.kidneys = [
            Ellipsoid((sx * (0.42 * aix + j(5)), ky, zc + j()), (24 * s(), 22 * s(), 50 * s()),
                      euler(-sx * u(20, 40), sx * u(10, 20), 0))
            for sx, zc in ((-1, -135.0), (1, zl - 115))
        ]
        self.stomach = Ellipsoid((0.4 * aix + j(), -0.35 * aiy + j(), zl - 45 + j()),
                                 (0.36 * aix * s(), 0.4 * aiy * s(), 48 * s()), euler(u(-30, 30), 0, u(-20, 20)),
                                 random_modes(rng, 4, (40, 100), (0.05, 0.15)))
        self.pancreas = [Capsule((-0.15 * aix, 0.1 * aiy, -100), (0.1 * aix, 0.2 * aiy, -85), u(10, 14)),
                         Capsule((0.1 * aix, 0.2 * aiy, -85), (0.55 * aix, 0.38 * aiy, zl - 80), u(8, 11))]
        self.heart = Ellipsoid((0.12 * aix, -0.3 * aiy, zl + 55), (0.36 * aix, 0.45 * aiy, 55), euler(u(-40, -20), 0, 0))
        # Bowel: colon frame plus random small-bowel loops (fluid or gas).
        ca, cd = -0.75 * aix, 0.78 * aix
        rc = u(16, 22)
        self.colon = [Capsule((ca, 0.0, -400), (ca, -0.1 * aiy, -150), rc),
                      Capsule((ca, -0.1 * aiy, -150), (0.0, -0.55 * aiy, -175), rc * 0.9),
                      Capsule((0.0, -0.55 * aiy, -175), (cd, -0.1 * aiy, zl - 125), rc * 0.9),
                      Capsule((cd, -0.1 * aiy, zl - 125), (cd, 0.15 * aiy, -400), rc)]
        self.colon_modes = random_modes(rng, 5, (15, 35), (0.2, 0.4))
        self.bowel = []
        for _ in range(rng.integers(8, 16)):
            p = np.array([u(-0.55, 0.55) * aix, u(-0.7, 0.1) * aiy, u(-330, -185)])
            r, gas = u(9, 13), rng.random() < 0.2
            for _ in range(rng.integers(2, 5)):
                q = p + rng.normal(size=3) * 18
                q[2] = min(q[2], -180)
                self.bowel.append((Capsule(p, q, r), gas))
                p = q
        self.bowel_fluid = u(5, 35)
        # Ribs: periodic bands in the muscle wall, sloping down anteriorly.
        self.rib_period, self.rib_thick, self.rib_phase, self.rib_slope = u(32, 40), u(8, 11), u(0, 40), u(0.25, 0.45)
        self.rib_bottom = -u(90, 130)
        self.noise_draw = u(5, 25)
        gx = np.arange(-200, 200, 2.0, dtype=F32)
        cav = b.cavity(gx[None, :], gx[:, None])
        self.h_min = float(self.dia.h(gx[None, :], gx[:, None])[cav].min())
        self.lesion_rng = np.random.default_rng([int(seed), 4])
        self.n_lesions = int(self.lesion_rng.integers(0, 7)) if n_lesions is None else int(n_lesions)

    # ------------------------------------------------------------------ liver
    def liver_q(self, x, y, z):
        q = None
        for e in self.lobes:
            qi = e.q(x, y, z)
            q = qi if q is None else np.minimum(q, qi)
        f = fourier(x, y, z, self.liver_modes)
        return q + f, f

    def liver_inside(self, x, y, z, return_field: bool = False):
        """Exact liver membership of physical points (the label-1 definition)."""
        q, f = self.liver_q(x, y, z)
        m = q < 1.0
        m &= z < self.dia.h(x, y) - F32(4.0)
        m &= self.body.cavity(x, y, margin=2.0)
        m &= ~self.gallbladder.inside(x, y, z)
        m &= ~self.ivc.inside(x, y, z, extra=2.0)
        m &= ~self.aorta.inside(x, y, z, extra=4.0)
        m &= ~((np.abs(x) < self.rv + 8) & (y > self.yv - self.rv - 6))
        return (m, f) if return_field else m

    def liver_bbox(self):
        slack = sum(m[1] for m in self.liver_modes)
        los, his = zip(*(e.bbox(pad=2, slack=slack) for e in self.lobes))
        return np.min(los, 0), np.max(his, 0)

    def coarse_liver(self, step: float = 4.0) -> np.ndarray:
        """(N, 3) points of a coarse sampling of the liver (for extents, lesions, vessels)."""
        lo, hi = self.liver_bbox()
        axes = [np.arange(lo[a], hi[a], step, dtype=F32) for a in range(3)]
        x, y, z = axes[0][None, None, :], axes[1][None, :, None], axes[2][:, None, None]
        m = self.liver_inside(x, y, z)
        kk, jj, ii = np.nonzero(m)
        return np.stack([axes[0][ii], axes[1][jj], axes[2][kk]], 1).astype(float)

    # ------------------------------------------------------ vessels, lesions
    def build_liver_contents(self) -> None:
        """Hepatic vessel tree and lesions, placed from a coarse liver sampling."""
        rng = np.random.default_rng([int(self.lesion_rng.integers(1 << 30)), 5])
        pts = self.coarse_liver()
        self.liver_points = pts
        self.liver_extent_z = (float(pts[:, 2].min()), float(pts[:, 2].max())) if len(pts) else (-150.0, 0.0)
        self.vessels = []  # (Capsule, kind)
        if len(pts) < 50:
            self.lesions = []
            return
        zlo, zhi = self.liver_extent_z

        def nearest(target):
            return pts[np.argmin(((pts - target) ** 2).sum(1))]

        def tree(root, kind, targets, r0):
            for t in targets:
                self.vessels.append((Capsule(root, t, r0), kind))
                for _ in range(2):
                    cand = pts[((pts - t) ** 2).sum(1) < 45.0 ** 2]
                    if len(cand):
                        self.vessels.append((Capsule(t, cand[rng.integers(len(cand))], r0 * 0.55), kind))

        right, left = pts[pts[:, 0] < np.percentile(pts[:, 0], 40)], pts[pts[:, 0] > np.percentile(pts[:, 0], 70)]
        hilum = nearest(np.array([-0.2 * self.body.aix, 0.0, zlo + 0.35 * (zhi - zlo)]))
        trunk = np.array([0.0, 0.3 * self.body.aiy, zlo - 10])
        self.vessels.append((Capsule(trunk, hilum, rng.uniform(6, 8)), "portal"))
        tree(hilum, "portal", [right[rng.integers(len(right))] for _ in range(2)] + [left[rng.integers(len(left))]],
             rng.uniform(4, 6))
        top = pts[pts[:, 2] > zhi - 0.4 * (zhi - zlo)]
        ivc_top = np.array([self.ivc.a[0], self.ivc.a[1], zhi - 15])
        if len(top):
            side = [top[top[:, 0] < np.median(top[:, 0])], top, top[top[:, 0] > np.median(top[:, 0])]]
            tree(ivc_top, "hepatic", [c[rng.integers(len(c))] for c in side if len(c)], rng.uniform(3.5, 5))
        self.lesions = self._place_lesions(pts)

    def _place_lesions(self, pts):
        rng = self.lesion_rng
        hyper_p = 0.6 if self.phase == "arterial" else 0.2
        dirs = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)], float)
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        lesions = []
        for _ in range(self.n_lesions):
            d = float(np.exp(rng.uniform(np.log(5.0), np.log(40.0))))
            shape = np.array([1.0, rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0)])
            R = euler(rng.uniform(0, 360), rng.uniform(0, 180), rng.uniform(0, 360))
            kind = "hyper" if rng.random() < hyper_p else "hypo"
            hu = self.hu["liver"] + rng.uniform(25, 60) if kind == "hyper" else rng.uniform(10, 40)
            rim = rng.random() < 0.3
            placed = None
            while placed is None and d >= 5.0:
                cand = pts[rng.integers(len(pts), size=256)] + rng.uniform(-2, 2, size=(256, 3))
                test = cand[:, None, :] + dirs[None] * (d / 2 + 2.0)
                test = np.concatenate([cand[:, None, :], test], 1).astype(F32)
                ok = self.liver_inside(test[..., 0], test[..., 1], test[..., 2]).all(1)
                for le in lesions:
                    ok &= np.linalg.norm(cand - le["centre"], axis=1) > (d + le["diameter_mm"]) / 2 + 4
                if ok.any():
                    placed = cand[np.argmax(ok)]
                else:
                    d *= 0.8
            if placed is None:
                continue
            lesions.append({"centre": placed, "diameter_mm": d, "radii": d / 2 * shape, "R": R, "kind": kind,
                            "hu": float(hu), "rim": rim})
        return lesions

    def lesion_shape(self, le) -> Ellipsoid:
        return Ellipsoid(le["centre"], le["radii"], le["R"])
