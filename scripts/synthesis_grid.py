"""Synthetic CTs beside real ones: writes training/synthesis_grid.png (used by training/README.md).

Top row: the real CTs of ../shared/data/real; below: CTs drawn from the anatomy maps of
../shared/data/anatomy by the training code itself (``anatomy_data.synthetic_cases``, the
anatomy_liver_tumor preset's seed and parameters), two variants per map. Every panel is the
axial slice through the liver's centre at the same window (W400/L40, display LPS: patient
right on the image left), with the reference liver outlined.

    .venv/bin/python scripts/synthesis_grid.py [--maps 4] [--cache runs/anatomy-cpu-cache]

The cache folder is the training cache: draws already made by a training run are reused.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
REAL = (("CHAOS", "chaos_evalsample"), ("TotalSegmentator", "totalseg_example"), ("LiTS 117 crop", "lits_117crop"))
WINDOW = (-160.0, 240.0)  # W400 / L40


def _axial(ct_path: Path, label_path: Path, liver_values: tuple[int, ...]):
    """(slice HU [j, i], liver mask [j, i], (row mm, column mm)) through the liver's centre, LPS."""
    import SimpleITK as sitk

    ct = sitk.DICOMOrient(sitk.ReadImage(str(ct_path)), "LPS")
    lab = sitk.DICOMOrient(sitk.ReadImage(str(label_path)), "LPS")
    a, m = sitk.GetArrayFromImage(ct), np.isin(sitk.GetArrayFromImage(lab), liver_values)
    k = int(np.round(np.argwhere(m)[:, 0].mean())) if m.any() else a.shape[0] // 2
    sx, sy = ct.GetSpacing()[:2]
    return a[k].astype(np.float32), m[k], (sy, sx)


def panels(n_maps: int, cache: Path):
    """(title, slice, liver, spacing) for the real CTs, then two synthetic variants per map."""
    import json

    out = []
    for title, stem in REAL:
        ct, lab = SHARED / "real" / f"{stem}_ct.nii.gz", SHARED / "real" / f"{stem}_label.nii.gz"
        if ct.is_file():
            out.append((f"real: {title}", *_axial(ct, lab, (1, 2))))
    anatomy = SHARED / "anatomy"
    if (anatomy / "anatomy_classes.json").is_file():
        from liverct_training.anatomy_data import synthetic_cases
        from liverct_training.config import load_config

        cfg = load_config("anatomy_liver_tumor", [f"data.synthetic.root={anatomy}"])
        spec = dict(cfg["data"]["synthetic"])
        maps = sorted(p.name[: -len("_anatomy.nii.gz")] for p in anatomy.glob("*_anatomy.nii.gz"))
        spec["cases"] = maps[:: max(1, len(maps) // max(1, n_maps))][:n_maps]
        target = json.loads((anatomy / "anatomy_classes.json").read_text())["target"]
        organ = tuple(int(v) for v in target["liver"] + target["liver_tumor"])
        for case in synthetic_cases(spec, cache, int(cfg["train"]["seed"])):
            out.append((f"synthetic: {case.case_id[len('synth_'):]}", *_axial(Path(case.image_path), Path(case.label_path), organ)))
    return out


def draw(items, path: Path, cols: int = 4) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, img, liver, (sy, sx)) in zip(axes.ravel(), items):
        extent = (0, img.shape[1] * sx, img.shape[0] * sy, 0)
        ax.imshow(np.clip(img, *WINDOW), cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], extent=extent)
        if liver.any():
            cols_mm, rows_mm = (np.arange(img.shape[1]) + 0.5) * sx, (np.arange(img.shape[0]) + 0.5) * sy
            ax.contour(cols_mm, rows_mm, liver.astype(float), levels=[0.5], colors="tab:red", linewidths=0.6)
        ax.set_title(title, fontsize=8)
    fig.suptitle("Real CT (top) and CTs synthesised from real anatomy maps, W400/L40, liver outlined", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--maps", type=int, default=4, help="anatomy maps to show (two variants each)")
    ap.add_argument("--cache", default=str(ROOT / "runs" / "anatomy-cpu-cache"), help="training cache folder")
    ap.add_argument("--out", default=str(ROOT / "training" / "synthesis_grid.png"))
    a = ap.parse_args()
    items = panels(a.maps, Path(a.cache))
    if not items:
        print(f"no data under {SHARED}: nothing to draw")
        return 1
    print(draw(items, Path(a.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
