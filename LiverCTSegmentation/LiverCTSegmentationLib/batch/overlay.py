"""PNG preview of a segmentation: axial, coronal and sagittal views with contours.

Display conventions (radiological, the same whatever the file's orientation):

- the volume is first reoriented to a canonical grid whose array axes are
  (S, P, L) increasing, i.e. LPS-aligned, using the direction matrix (each voxel axis
  is mapped to the patient axis it is closest to, then flipped if it points the
  other way; oblique volumes are shown in their nearest axis-aligned frame, which is
  enough for a preview and never mirrors the anatomy);
- axial: seen from the feet, patient right on the image LEFT, anterior at the top;
- coronal: seen from the front, patient right on the image left, superior at the top;
- sagittal: seen from the patient's left, anterior on the image left, superior at the top.

So an LPS file, a RAS-flipped file and a file with flipped slices of the same anatomy
give the same picture (tested).

Uses matplotlib's object API with the Agg canvas (no pyplot global state), so it is
safe in worker threads and headless.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..engine.volume import Volume

WINDOW = (-160.0, 240.0)
DEFAULT_COLORS = {1: (221, 130, 101), 2: (144, 238, 144)}
DEFAULT_NAMES = {1: "Liver", 2: "Liver tumor"}


def canonical_lps(vol: Volume, array: Optional[np.ndarray] = None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Return (array indexed [S, P, L] increasing, spacing (L, P, S) in mm).

    ``array`` (same shape as ``vol.array``) is reoriented instead of ``vol.array`` if given.
    """
    a = vol.array if array is None else array
    d = np.asarray(vol.direction, dtype=float)
    # For each voxel axis (i, j, k) -> closest patient axis (0=L, 1=P, 2=S) and sign.
    axis_of = [-1, -1, -1]
    used: set[int] = set()
    order = np.argsort(-np.max(np.abs(d), axis=0))  # most clearly aligned voxel axes first
    for v in order:
        cands = [p for p in np.argsort(-np.abs(d[:, v])) if p not in used]
        axis_of[v] = int(cands[0])
        used.add(int(cands[0]))
    sign = [np.sign(d[axis_of[v], v]) or 1.0 for v in range(3)]
    # array axes are (k, j, i) -> voxel axes (2, 1, 0).
    arr = a
    for v in range(3):
        if sign[v] < 0:
            arr = np.flip(arr, axis=2 - v)
    # Want array axes ordered (S, P, L) = patient axes (2, 1, 0).
    src_for_patient = {axis_of[v]: 2 - v for v in range(3)}  # patient axis -> array axis
    arr = np.transpose(arr, (src_for_patient[2], src_for_patient[1], src_for_patient[0]))
    spacing_by_patient = {axis_of[v]: vol.spacing[v] for v in range(3)}
    return arr, (spacing_by_patient[0], spacing_by_patient[1], spacing_by_patient[2])


def _best_index(mask: np.ndarray, axis: int) -> int:
    other = tuple(a for a in range(3) if a != axis)
    counts = mask.sum(axis=other)
    if counts.max() == 0:
        return mask.shape[axis] // 2
    return int(np.argmax(counts))


def _rgb(color: Sequence[float]) -> tuple[float, float, float]:
    c = [float(x) for x in color][:3]
    if max(c) > 1.0:
        c = [x / 255.0 for x in c]
    return (c[0], c[1], c[2])


def _caption(statistics: Optional[dict], model: Optional[str]) -> str:
    if not statistics:
        return f"model: {model}" if model else ""
    parts = []
    liver = statistics.get("liver_ml")
    if liver is not None:
        parts.append(f"Liver {float(liver):.1f} mL")
    n = statistics.get("tumor_count")
    if n is not None:
        n = int(n)
        tumor_ml = float(statistics.get("tumor_ml") or 0.0)
        burden = float(statistics.get("burden_percent") or 0.0)
        parts.append(f"{n} tumour{'s' if n != 1 else ''}, {tumor_ml:.1f} mL ({burden:.1f}% burden)")
        largest = statistics.get("largest_lesion_diameter_mm")
        if n and largest:
            parts.append(f"largest {float(largest):.1f} mm")
    if model:
        parts.append(f"model: {model}")
    return "   ·   ".join(parts)


def _statistics_from_labelmap(labelmap: Volume) -> dict:
    try:
        from ..engine.statistics import compute_statistics

        s = compute_statistics(labelmap)
        return s.to_dict() if hasattr(s, "to_dict") else dict(s)
    except ImportError:
        ml = labelmap.voxel_volume_mm3 / 1000.0
        organ = float(np.count_nonzero(labelmap.array)) * ml
        tumour = float(np.count_nonzero(labelmap.array == 2)) * ml
        return {"liver_ml": organ, "tumor_ml": tumour, "burden_percent": 100 * tumour / organ if organ else 0.0}


def save_overlay_png(
    ct: Volume,
    labelmap: Volume,
    path: Union[str, os.PathLike],
    title: Optional[str] = None,
    statistics: Optional[dict] = None,
    labels: Optional[list[dict]] = None,
    model: Optional[str] = None,
    dpi: int = 100,
) -> Path:
    """Write a 3-view PNG (axial through the largest liver cross-section, coronal and
    sagittal through the largest liver sections), CT windowed to (-160, 240) HU,
    liver and tumour contours in the bundle's colours, statistics as a caption.

    ``labelmap`` must be on ``ct``'s grid. ``statistics`` (Statistics.to_dict()) is
    computed from the labelmap if not given. Written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if ct.array.shape[:3] != labelmap.array.shape[:3]:
        raise ValueError("labelmap must be on the CT grid")
    colors = dict(DEFAULT_COLORS)
    names = dict(DEFAULT_NAMES)
    for lab in labels or []:
        if "value" in lab:
            if "color" in lab:
                colors[int(lab["value"])] = tuple(lab["color"])
            if "name" in lab:
                names[int(lab["value"])] = str(lab["name"])
    if statistics is None:
        statistics = _statistics_from_labelmap(labelmap)

    img, (sx, sy, sz) = canonical_lps(ct)
    lab, _ = canonical_lps(ct, labelmap.array)
    organ = lab > 0
    tumour = lab == 2

    zi = _best_index(organ, 0)  # axial slice (S axis)
    yi = _best_index(organ, 1)  # coronal (P axis)
    xi = _best_index(organ, 2)  # sagittal (L axis)
    views = [
        # name, CT slice, label slice, aspect (row/col spacing), (left, right, top, bottom) labels
        ("Axial", img[zi], organ[zi], tumour[zi], sy / sx, ("R", "L", "A", "P")),
        ("Coronal", img[::-1, yi, :], organ[::-1, yi, :], tumour[::-1, yi, :], sz / sx, ("R", "L", "S", "I")),
        ("Sagittal", img[::-1, :, xi], organ[::-1, :, xi], tumour[::-1, :, xi], sz / sy, ("A", "P", "S", "I")),
    ]

    fig = Figure(figsize=(13.5, 5.4), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    liver_c, tumour_c = _rgb(colors.get(1, DEFAULT_COLORS[1])), _rgb(colors.get(2, DEFAULT_COLORS[2]))
    for ax, (name, ctsl, osl, tsl, aspect, marks) in zip(axes, views):
        ax.imshow(np.asarray(ctsl, dtype=np.float32), cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1],
                  aspect=aspect, interpolation="bilinear", origin="upper")
        if osl.any() and 0 < osl.sum() < osl.size:
            ax.contour(osl.astype(np.float32), levels=[0.5], colors=[liver_c], linewidths=1.4)
        if tsl.any() and 0 < tsl.sum() < tsl.size:
            ax.contour(tsl.astype(np.float32), levels=[0.5], colors=[tumour_c], linewidths=1.4)
        ax.set_title(name, color="white", fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        kw = dict(color="yellow", fontsize=10, fontweight="bold", transform=ax.transAxes)
        ax.text(0.01, 0.5, marks[0], ha="left", va="center", **kw)
        ax.text(0.99, 0.5, marks[1], ha="right", va="center", **kw)
        ax.text(0.5, 0.99, marks[2], ha="center", va="top", **kw)
        ax.text(0.5, 0.01, marks[3], ha="center", va="bottom", **kw)
    handles = [Line2D([0], [0], color=liver_c, lw=2, label=names.get(1, "Liver")),
               Line2D([0], [0], color=tumour_c, lw=2, label=names.get(2, "Liver tumor"))]
    fig.legend(handles=handles, loc="upper right", frameon=False, labelcolor="white", fontsize=10)
    if title:
        fig.suptitle(title, color="white", fontsize=13, x=0.02, ha="left")
    caption = _caption(statistics, model)
    if not organ.any():
        caption = "No liver found.   " + caption
    fig.text(0.5, 0.02, caption, ha="center", va="bottom", color="white", fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.88, bottom=0.09, wspace=0.03)

    path = Path(path)
    from .atomic_files import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", facecolor=fig.get_facecolor(), dpi=dpi)
    return path
