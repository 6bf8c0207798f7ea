"""Is this result a liver the model can stand behind? Warnings for implausible liver segmentations.

A network asked to find a liver always finds *something*: a head CT, a chest-only
CT or a synthetic body still gets a "liver". These checks look at the result
and the CT and say, in words, when the result is not believable:

- volume outside ``VOLUME_L`` (adult livers are about 1.0-2.5 L; 0.6 L and
  4.5 L leave room for small adults and hepatomegaly);
- the liver cut by the scan's edge (a large cut face on a boundary slice, along
  each axis, named in patient terms from the direction matrix);
- the liver's centre not on the patient's right of the body's midline (LPS: x
  grows to the patient's *left*, so right means a smaller x than the body's);
- mean intensity inside the liver outside ``HU_RANGE`` (see its comment);
- the coarse network's mean probability inside its liver below ``MIN_PROBABILITY``.

All geometry is physical (spacing, origin, direction), so flipped, oblique and
RAS-stored inputs are judged by the anatomy, not by array order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .volume import nonzero_box
from .volume import Volume

__all__ = ["REVIEW", "LiverMeasures", "measure_liver", "plausibility_warnings", "VOLUME_L", "HU_RANGE",
           "EDGE_FRACTION", "MIDLINE_MARGIN_MM", "MIN_PROBABILITY"]

REVIEW = "Review before use: "  # every warning here starts so: the result may not be a (whole) liver
VOLUME_L = (0.6, 4.5)
# Liver parenchyma: unenhanced 40-70 HU (severe steatosis down to about -10, iron overload up to
# about 140), portal venous 100-150. A mean below -20 HU means fat or air inside the "liver"; above
# 200 HU, bone, undiluted contrast or an image not in HU (e.g. stored without its +1024 offset removed).
HU_RANGE = (-20.0, 200.0)
# Cut face on a boundary slice / largest cross-section along that axis. A clipped tip (the real
# CHAOS case: 8% at its feet end) costs little volume; a quarter of the organ's section means a
# sizable part is likely outside the scan (the LiTS 128 mm crop: 39% at its right side; the
# TotalSegmentator example, whose liver top is outside the scan: 92% at its head end).
EDGE_FRACTION = 0.25
MIDLINE_MARGIN_MM = 5.0  # the liver's centre must be at least this far right of the body's centre
# Mean coarse non-background probability inside the liver: 0.98 on the sample and the real CTs,
# 0.73 on a chest-only crop of the sample, 0.58 for the tests' threshold "network".
MIN_PROBABILITY = 0.75
BODY_HU = -500.0  # air outside the patient is about -1000 HU, soft tissue > -150
_BODY_SAMPLES = 96  # per axis: the body's centre needs no full resolution

# Patient-axis names of the two ends of each LPS axis: (lower coordinate end, higher coordinate end).
_ENDS = (("right-side", "left-side"), ("front", "back"), ("feet-end", "head-end"))


@dataclass
class LiverMeasures:
    volume_ml: float
    mean_hu: float
    midline_offset_mm: float  # liver centre minus body centre along LPS x; negative = patient's right
    edge_fractions: dict = field(default_factory=dict)  # edge name -> cut face / largest section


def _profiles(mask: np.ndarray) -> list[np.ndarray]:
    """Voxel counts per slice along each array axis (k, j, i)."""
    return [mask.sum(axis=tuple(b for b in range(3) if b != a)).astype(float) for a in range(3)]


def _body_centre_lps(volume: Volume) -> np.ndarray:
    """Centre of the voxels brighter than air (the patient), or the image centre when that is not defined."""
    steps = [max(1, n // _BODY_SAMPLES) for n in volume.array.shape[:3]]
    body = volume.array[::steps[0], ::steps[1], ::steps[2]] > BODY_HU
    if body.any() and not body.all():
        kji = np.array([np.average(np.arange(p.size) * s, weights=p) for p, s in zip(_profiles(body), steps)])
    else:
        kji = (np.array(volume.array.shape[:3], float) - 1) / 2
    return volume.physical_points(kji[::-1][None])[0]


def measure_liver(volume: Volume, labelmap: Volume) -> Optional[LiverMeasures]:
    """Volume, mean HU, side and edge contact of the liver (label > 0); None when there is none."""
    box = nonzero_box(labelmap.array)
    if box is None:
        return None
    mask = labelmap.array[box] > 0
    n = int(np.count_nonzero(mask))
    mean_hu = float(volume.array[box][mask].mean(dtype=np.float64))
    profiles = _profiles(mask)
    centre_kji = np.array([np.average(np.arange(p.size) + box[a].start, weights=p) for a, p in enumerate(profiles)])
    centre = volume.physical_points(centre_kji[::-1][None])[0]
    offset = float(centre[0] - _body_centre_lps(volume)[0])

    edges: dict[str, float] = {}
    shape = labelmap.array.shape[:3]
    for a, prof in enumerate(profiles):
        column = volume.direction[:, 2 - a]  # array axis a is index axis i/j/k = 2 - a
        axis = int(np.argmax(np.abs(column)))
        low_end, high_end = _ENDS[axis] if column[axis] > 0 else _ENDS[axis][::-1]
        if box[a].start == 0:
            edges[low_end] = max(edges.get(low_end, 0.0), float(prof[0] / prof.max()))
        if box[a].stop == shape[a]:
            edges[high_end] = max(edges.get(high_end, 0.0), float(prof[-1] / prof.max()))
    return LiverMeasures(n * volume.voxel_volume_mm3 / 1000.0, mean_hu, offset, edges)


def _litres(ml: float) -> str:
    return f"{ml / 1000:.1f} L" if ml >= 1000 else f"{ml:.0f} mL"


def plausibility_warnings(volume: Volume, labelmap: Volume, coarse_probability: Optional[float] = None,
                          measures: Optional[LiverMeasures] = None) -> list[str]:
    """One specific warning (each starts with ``REVIEW``) per failed check of the liver (label > 0)
    in ``labelmap`` on ``volume``'s grid.

    ``coarse_probability``: the coarse network's mean non-background probability inside its liver
    (None: not checked). ``measures``: ``measure_liver``'s result when already computed."""
    m = measures or measure_liver(volume, labelmap)
    if m is None:
        return [REVIEW + "no liver found; this may not be an abdominal CT, or the liver is outside the scan."]
    out = []
    lo, hi = VOLUME_L
    if not lo * 1000 <= m.volume_ml <= hi * 1000:
        out.append(f"{REVIEW}liver volume {_litres(m.volume_ml)} is outside the plausible {lo:g}-{hi:g} L; this "
                   "may not be an abdominal CT, or the liver is not fully in the scan.")
    cut = {edge: frac for edge, frac in m.edge_fractions.items() if frac >= EDGE_FRACTION}
    if cut:
        sides = ", ".join(f"{edge} edge {frac:.0%}" for edge, frac in cut.items())
        out.append(f"{REVIEW}the liver is cut off by the scan ({sides} of its largest cross-section lies on the "
                   "edge slice), so its volume is underestimated; use a scan that covers the whole liver for "
                   "volumes.")
    if m.midline_offset_mm > -MIDLINE_MARGIN_MM:
        where = f"{m.midline_offset_mm:.0f} mm to the patient's left of" if m.midline_offset_mm > 0 else "on"
        out.append(f"{REVIEW}the liver's centre lies {where} the body's midline, not on the patient's right; the "
                   "image may be flipped left-right (its data and header disagree), or this is not a liver.")
    hu_lo, hu_hi = HU_RANGE
    if not hu_lo <= m.mean_hu <= hu_hi:
        out.append(f"{REVIEW}the mean intensity inside the liver is {m.mean_hu:.0f} HU, outside the {hu_lo:g} to "
                   f"{hu_hi:g} HU of liver tissue; the result covers something else (fat, air or bone), or the "
                   "image is not in Hounsfield units.")
    if coarse_probability is not None and coarse_probability < MIN_PROBABILITY:
        out.append(f"{REVIEW}the model is unsure this is a liver (mean liver probability {coarse_probability:.2f}, "
                   f"below {MIN_PROBABILITY:g}); the image may differ from the CTs it was trained on.")
    return out
