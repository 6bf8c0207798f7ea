"""Volumes, tumour burden and per-lesion measurements of a liver/tumour labelmap.

Definitions:
- liver volume = liver + tumour voxels (the whole organ), in mL;
- tumour burden = tumour volume / organ volume * 100 (0 when there is no organ);
- a lesion is one 26-connected component of the tumour label; lesions are
  numbered 1..n by decreasing volume;
- longest axial diameter = the largest distance, in physical mm, between the
  centres of two voxels of the lesion lying on the same k-slice of the volume.
  For an oblique volume "axial" therefore means the volume's own k-slices (the
  acquisition plane), not the patient's true axial plane. Spacing and the
  direction matrix are taken into account, so anisotropic and sheared grids
  measure correctly.

The diameter uses, per slice, only the two extreme voxels of each row (the
convex hull's vertices are among them), then the convex hull, then the
largest pairwise distance among hull vertices: the hull is computed in index
space, which is exact because the index-to-physical map is affine.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from .volume import Volume, nonzero_box


@dataclass
class Lesion:
    index: int
    volume_ml: float
    longest_axial_diameter_mm: float
    centroid_lps: tuple[float, float, float]


@dataclass
class Statistics:
    liver_ml: float
    tumor_count: int
    tumor_ml: float
    burden_percent: float
    lesions: list[Lesion] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Flat summary (JSON/CSV friendly); lesion-free cases give 0.0 for the largest-lesion fields."""
        return {
            "liver_ml": round(self.liver_ml, 3),
            "tumor_count": int(self.tumor_count),
            "tumor_ml": round(self.tumor_ml, 3),
            "burden_percent": round(self.burden_percent, 3),
            "largest_lesion_ml": round(max((l.volume_ml for l in self.lesions), default=0.0), 3),
            "largest_lesion_diameter_mm": round(
                max((l.longest_axial_diameter_mm for l in self.lesions), default=0.0), 2
            ),
        }

    def lesion_rows(self) -> list[dict[str, Any]]:
        """One flat dict per lesion (for a lesions CSV or a table widget)."""
        rows = []
        for les in self.lesions:
            d = asdict(les)
            c = d.pop("centroid_lps")
            d["volume_ml"] = round(d["volume_ml"], 4)
            d["longest_axial_diameter_mm"] = round(d["longest_axial_diameter_mm"], 2)
            d.update({"centroid_l_mm": round(c[0], 2), "centroid_p_mm": round(c[1], 2), "centroid_s_mm": round(c[2], 2)})
            rows.append(d)
        return rows


def _lesion_ids(tumor: np.ndarray) -> np.ndarray:
    """uint16 26-connected component ids of a non-empty uint8/bool mask, 1 = largest."""
    import SimpleITK as sitk

    cc = sitk.ConnectedComponent(sitk.GetImageFromArray(np.ascontiguousarray(tumor, dtype=np.uint8)), True)
    relabelled = sitk.RelabelComponent(cc, sortByObjectSize=True)
    ids = sitk.GetArrayFromImage(relabelled)
    if ids.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"{int(ids.max())} separate lesions: the labelmap is not a plausible segmentation")
    return ids.astype(np.uint16, copy=False)


def label_lesions(labelmap: Volume, tumor_label: int = 2) -> np.ndarray:
    """uint16 [k, j, i] array of lesion ids (0 = none), 26-connected, 1 = largest."""
    arr = np.asarray(labelmap.array)
    out = np.zeros(arr.shape, dtype=np.uint16)
    box = nonzero_box(arr)
    if box is not None:
        tumor = arr[box] == tumor_label  # components only on the labelled box
        if tumor.any():
            out[box] = _lesion_ids(tumor)
    return out


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Vertices of the 2D convex hull (Andrew's monotone chain); points are integer (x, y)."""
    pts = np.unique(points, axis=0)  # sorted lexicographically
    if len(pts) <= 2:
        return pts

    def half(seq: np.ndarray) -> list:
        chain: list = []
        for p in seq:
            while len(chain) >= 2:
                (ax, ay), (bx, by) = chain[-2], chain[-1]
                if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) > 0:
                    break
                chain.pop()
            chain.append((int(p[0]), int(p[1])))
        return chain

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def _slice_extremes(mask2d: np.ndarray) -> np.ndarray:
    """(N, 2) (i, j) indices of the first and last voxel of every non-empty row j."""
    rows = np.nonzero(mask2d.any(axis=1))[0]
    sub = mask2d[rows]
    first = sub.argmax(axis=1)
    last = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    return np.concatenate([np.stack([first, rows], 1), np.stack([last, rows], 1)])


def longest_axial_diameter(mask_kji: np.ndarray, ij_to_mm: np.ndarray) -> float:
    """Largest same-k-slice distance between voxel centres of a boolean mask.

    ``ij_to_mm`` is the 3x2 matrix mapping an (i, j) index step to an LPS
    displacement in mm (first two columns of direction @ diag(spacing)).
    """
    best = 0.0
    for k in np.nonzero(mask_kji.reshape(mask_kji.shape[0], -1).any(axis=1))[0]:
        hull = _convex_hull(_slice_extremes(mask_kji[k]))
        if len(hull) < 2:
            continue
        phys = hull.astype(float) @ ij_to_mm.T
        diff = phys[:, None, :] - phys[None, :, :]
        best = max(best, float(np.sqrt((diff**2).sum(-1).max())))
    return best


def compute_statistics(labelmap: Volume, liver_label: int = 1, tumor_label: int = 2) -> Statistics:
    """Organ/tumour volumes, burden and per-lesion measurements (see module docstring).

    Everything runs on the bounding box of the non-zero labels (a liver is a
    small part of a CT), so the cost and the temporaries scale with the liver,
    not with the scan.
    """
    import SimpleITK as sitk

    from .preprocess import crop_box

    arr = np.asarray(labelmap.array)
    voxel_ml = labelmap.voxel_volume_mm3 * abs(float(np.linalg.det(labelmap.direction))) / 1000.0
    box = nonzero_box(arr)
    if box is None:
        return Statistics(liver_ml=0.0, tumor_count=0, tumor_ml=0.0, burden_percent=0.0, lesions=[])
    sub = arr[box]
    tumor = sub == tumor_label
    n_tumor = int(np.count_nonzero(tumor))
    n_organ = int(np.count_nonzero(sub == liver_label)) + n_tumor
    lesions: list[Lesion] = []
    if n_tumor:
        lo_ijk = (box[2].start, box[1].start, box[0].start)
        hi_ijk = (box[2].stop - 1, box[1].stop - 1, box[0].stop - 1)
        crop = crop_box(labelmap, lo_ijk, hi_ijk)  # the box's geometry (origin moved)
        img = sitk.GetImageFromArray(tumor.view(np.uint8))
        del tumor
        img.SetSpacing(crop.spacing)
        img.SetOrigin(crop.origin)
        img.SetDirection(tuple(crop.direction.flatten()))
        # Component ids straight from ConnectedComponent (no relabel pass / numpy copy of the id image);
        # lesions are ordered like RelabelComponent: decreasing size, ties by id.
        cc = sitk.ConnectedComponent(img, True)
        del img
        shape = sitk.LabelShapeStatisticsImageFilter()
        shape.ComputePerimeterOff()  # the perimeter is not reported and costs more than the rest
        shape.Execute(cc)
        ids = sitk.GetArrayViewFromImage(cc)  # valid while cc lives
        ij_to_mm = (labelmap.direction @ np.diag(labelmap.spacing))[:, :2]
        order = sorted(shape.GetLabels(), key=lambda lab: (-shape.GetNumberOfPixels(lab), lab))
        for n, lid in enumerate(order, start=1):
            i0, j0, k0, si, sj, sk = shape.GetBoundingBox(lid)
            one = ids[k0 : k0 + sk, j0 : j0 + sj, i0 : i0 + si] == lid
            lesions.append(
                Lesion(
                    index=n,
                    volume_ml=shape.GetNumberOfPixels(lid) * voxel_ml,
                    longest_axial_diameter_mm=longest_axial_diameter(one, ij_to_mm),
                    centroid_lps=tuple(float(c) for c in shape.GetCentroid(lid)),
                )
            )
        del ids, cc
    return Statistics(
        liver_ml=n_organ * voxel_ml,
        tumor_count=len(lesions),
        tumor_ml=n_tumor * voxel_ml,
        burden_percent=(100.0 * n_tumor / n_organ) if n_organ else 0.0,
        lesions=lesions,
    )
