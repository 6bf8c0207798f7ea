#!/usr/bin/env python
"""Write the bundled sample CT (a seeded phantom) and its ground truth.

    .venv/bin/python scripts/make_sample.py [--preview /tmp/phantom_preview.png]

Output: LiverCTSegmentation/Resources/Samples/phantom_ct.nii.gz (int16 HU) and
phantom_label.nii.gz (uint8: 1 liver, 2 tumour). LPS orientation, 168x168x80
voxels at 2.05x2.05x2.8 mm, 3 lesions, portal-venous phase; fixed seed so the
files are reproducible.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LiverCTSegmentation"))

from LiverCTSegmentationLib.synthetic.phantom import make_phantom  # noqa: E402

SEED = 20240601
SAMPLE_KW = dict(shape_kji=(80, 168, 168), spacing=(2.05, 2.05, 2.8), orientation="LPS", n_lesions=3, fov="full",
                 contrast="portal", noise=10.0)
OUT = ROOT / "LiverCTSegmentation" / "Resources" / "Samples"


def write(vol, path: Path) -> None:
    import SimpleITK as sitk

    tmp = path.with_name(path.name + ".tmp.nii.gz")
    sitk.WriteImage(vol.to_sitk(), str(tmp), True)
    tmp.replace(path)


def preview(ct, lab, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    a, l = ct.array, lab.array
    k_t = int(np.median(np.nonzero(l == 2)[0])) if (l == 2).any() else a.shape[0] // 2
    k_top = a.shape[0] - 4
    j_c = int(np.nonzero(l.any((0, 2)))[0].mean())
    fig, ax = plt.subplots(1, 3, figsize=(16, 6))
    asp = ct.spacing[2] / ct.spacing[0]
    for axis, img, lb, title, kw in (
        (ax[0], a[k_top], l[k_top], f"axial k={k_top} (top: lung bases)", {}),
        (ax[1], a[k_t], l[k_t], f"axial k={k_t} (lesion)", {}),
        (ax[2], a[:, j_c, :], l[:, j_c, :], f"coronal j={j_c}", {"origin": "lower", "aspect": asp}),
    ):
        axis.imshow(img, cmap="gray", vmin=-160, vmax=240, **kw)
        axis.contour(lb, levels=[0.5, 1.5], colors=["r", "y"], linewidths=0.8, **({"origin": "lower"} if kw else {}))
        axis.set_title(title + "  (image left = patient right)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preview", default=None, help="also save a PNG preview here")
    args = p.parse_args(argv)
    ct, lab = make_phantom(SEED, **SAMPLE_KW)
    OUT.mkdir(parents=True, exist_ok=True)
    write(ct, OUT / "phantom_ct.nii.gz")
    write(lab, OUT / "phantom_label.nii.gz")
    meta = ct.metadata["phantom"]
    print(f"wrote {OUT}/phantom_ct.nii.gz {ct.array.shape} spacing {ct.spacing} lesions {meta['n_lesions']} "
          f"contrast {meta['contrast']}")
    if args.preview:
        preview(ct, lab, args.preview)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
