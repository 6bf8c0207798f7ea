"""Slicer segmentation files (.seg.nrrd): one labelmap layer plus per-segment metadata.

Written with slicerio's header formatting (pynrrd underneath) so Slicer shows
names, colours and terminology exactly as the model bundle's ``labels`` define.
Read back with pynrrd for round-trip tests and for loading edited results.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, OutputError
from .volume import LPS_TO_RAS, Volume, nonzero_box

CATEGORY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMY_CONTEXT = "Anatomic codes - DICOM master list"
CONVERSION_PARAMETERS = (
    "Collapse labelmaps|1|Merge the labelmaps into as few shared labelmaps as possible"
    "&Compute surface normals|1|Compute surface normals. 1 (default) = surface normals are computed. "
    "0 = surface normals are not computed (slightly faster but produces less smooth surface display)."
    "&Crop to reference image geometry|0|Crop the model to the extent of reference geometry. "
    "0 (default) = created labelmap will contain the entire model. 1 = created labelmap extent will be within "
    "reference image extent."
    "&Decimation factor|0.0|Desired reduction in the total number of polygons. Range: 0.0 (no decimation) to 1.0 "
    "(as much simplification as possible). Value of 0.8 typically reduces data set size by 80% without losing "
    "too much details."
    "&Fractional labelmap oversampling factor|1|Determines the oversampling of the reference image geometry. "
    "All segments are oversampled with the same value (value of 1 means no oversampling)."
    "&Joint smoothing|0|Perform joint smoothing."
    "&Oversampling factor|1|Determines the oversampling of the reference image geometry. If it's a number, "
    "then all segments are oversampled with the same value (value of 1 means no oversampling). If it has the "
    "value \"A\", then automatic oversampling is calculated."
    "&Smoothing factor|0.5|Smoothing factor. Range: 0.0 (no smoothing) to 1.0 (strong smoothing)."
    "&Threshold fraction|0.5|Determines the threshold that the closed surface is created at as a fractional "
    "value between 0 and 1."
)


def terminology_string(term: dict[str, Any] | None) -> str:
    """model.json terminology dict (category/type/region as [scheme, code, meaning]) -> Slicer TerminologyEntry."""
    term = term or {}

    def code(key: str) -> str:
        v = term.get(key)
        return "^".join(str(x) for x in v) if v else "^^"

    category = code("category") if term.get("category") else "SCT^85756007^Tissue"
    typ = code("type") if term.get("type") else "SCT^85756007^Tissue"
    return "~".join([CATEGORY_CONTEXT, category, typ, code("type_modifier"), ANATOMY_CONTEXT,
                     code("region"), code("region_modifier")])


def _extent(arr: np.ndarray, box: tuple[slice, ...] | None, value: int) -> list[int]:
    """Slicer's segment extent [i_min, i_max, j_min, j_max, k_min, k_max]; empty -> [0, -1] per axis."""
    if box is None:
        return [0, -1, 0, -1, 0, -1]
    m = arr[box] == value
    out: list[int] = []
    for axes, sl in (((0, 1), box[2]), ((0, 2), box[1]), ((1, 2), box[0])):  # i, j, k
        idx = np.flatnonzero(m.any(axis=axes))
        if idx.size == 0:
            return [0, -1, 0, -1, 0, -1]
        out += [int(sl.start + idx[0]), int(sl.start + idx[-1])]
    return out


def reference_geometry_string(labelmap: Volume) -> str:
    """Slicer's "Reference image geometry" conversion parameter: IJK-to-RAS (row-major) then the extent.

    With it Slicer (and :func:`read_seg_nrrd`) know the full grid of a file cropped to its labels."""
    def num(v: float) -> str:
        t = repr(float(v)) if np.isfinite(v) else "0"
        return t[:-2] if t.endswith(".0") else t

    m = labelmap.ijk_to_ras()
    size = labelmap.size_ijk
    extent = [0, size[0] - 1, 0, size[1] - 1, 0, size[2] - 1]
    return "".join(num(v) + ";" for v in m.flatten()) + "".join(f"{e};" for e in extent)


def write_seg_nrrd(labelmap: Volume, labels: list[dict], path: str | os.PathLike, overwrite: bool = False,
                   compression_level: int = 1, crop: bool = True) -> Path:
    """Write a Slicer .seg.nrrd (one layer) with a segment per entry of ``labels``; atomic.

    ``crop``: store only the box around the labelled voxels, as Slicer does when it saves with
    "crop to minimum extent": the NRRD's origin is that box's first voxel, the header's
    ``Segmentation_ReferenceImageExtentOffset`` is the box's index in the full grid, segment
    extents are relative to the box, and the conversion parameters carry the full grid
    ("Reference image geometry"). A liver box is a small part of an abdominal CT, so this is
    what makes the write cheap. An empty labelmap is stored whole.
    gzip level 1: a labelmap is mostly zeros, so level 6 gains little. For a 512x512x300 result
    (``bench/bench_io.py``): box at level 1 0.03 s and 0.17 MB; whole grid at level 1 0.12 s and
    0.52 MB, at level 6 0.21 s and 0.18 MB.
    """
    import slicerio

    from .atomic_write import atomic_write

    arr = np.asarray(labelmap.array)
    if arr.ndim != 3:
        raise OutputError("A segmentation must be a 3D labelmap.")
    if not Path(path).name.lower().endswith(".seg.nrrd"):
        raise OutputError(f"'{Path(path).name}': Slicer segmentation files must end with .seg.nrrd.")
    if arr.dtype not in (np.uint8, np.uint16, np.int16, np.int32, np.uint32):
        arr = arr.astype(np.uint16 if arr.max(initial=0) > 255 else np.uint8)
    box = nonzero_box(arr)
    lo = np.zeros(3, int)  # (i, j, k) of the stored array's first voxel in the full grid
    stored, ijk_to_lps = arr, labelmap.ijk_to_lps()
    if crop and box is not None:
        lo = np.array([box[2].start, box[1].start, box[0].start])
        stored = arr[box]
        ijk_to_lps[:3, 3] = labelmap.physical_points(lo[None, :].astype(float))[0]
    segments = []
    for lab in labels:
        value = int(lab["value"])
        extent = _extent(arr, box, value)
        if extent[1] >= extent[0]:
            extent = [e - int(lo[n // 2]) for n, e in enumerate(extent)]
        color = [round(float(c) / 255.0, 6) for c in lab.get("color", (128, 128, 128))]
        segments.append({
            "id": f"Segment_{value}", "name": str(lab.get("name", f"Label {value}")), "color": color,
            "labelValue": value, "layer": 0, "extent": extent, "nameAutoGenerated": False,
            "colorAutoGenerated": False,
            "tags": {"TerminologyEntry": terminology_string(lab.get("terminology"))},
        })
    geometry = ("&Reference image geometry|" + reference_geometry_string(labelmap)
                + "|Image geometry description string determining the geometry of the labelmap that is created "
                  "in course of conversion. Can be copied from a volume, using the button.")
    seg = {
        "voxels": stored,
        "ijkToLPS": ijk_to_lps,
        "segments": segments,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "Segmentation_SourceRepresentation": "Binary labelmap",
        "Segmentation_ConversionParameters": CONVERSION_PARAMETERS + geometry,
        "referenceImageExtentOffset": [int(x) for x in lo],
    }

    def write(tmp: Path) -> None:
        slicerio.write_segmentation(str(tmp), seg, compression_level=compression_level, index_order="C")

    return atomic_write(path, write, overwrite=overwrite)


def read_seg_nrrd(path: str | os.PathLike) -> tuple[Volume, list[dict]]:
    """Read a .seg.nrrd into a labelmap Volume (LPS) and its segments' metadata.

    Segments: dicts with id, name, color (0..1 floats), value (label value),
    layer, extent (full-grid indices), tags (dict) and terminology (the TerminologyEntry string).
    A file cropped to its labels comes back on its full reference grid.
    Several layers (overlapping segments) are merged, later segments winning.
    """
    import nrrd

    p = Path(path)
    if not p.is_file():
        raise InputError(f"Segmentation file not found: '{p}'.")
    try:
        data, hdr = nrrd.read(str(p), index_order="C")
    except Exception as e:  # pynrrd raises its own and numpy errors
        raise InputError(f"'{p}' is not a readable .seg.nrrd file ({e}). Re-export it from Slicer.") from e
    dirs = np.asarray(hdr.get("space directions"), dtype=float)
    if dirs.shape[0] == 4:  # leading "none" row for the layer axis
        dirs = dirs[1:]
    if dirs.shape != (3, 3) or not np.isfinite(dirs).all():
        raise InputError(f"'{p}' has no usable 'space directions'; it cannot be placed in patient space.")
    origin = np.asarray(hdr.get("space origin", np.zeros(3)), dtype=float)
    space = str(hdr.get("space", "left-posterior-superior")).lower()
    m = dirs.T  # columns = i, j, k axis vectors
    if space in ("right-anterior-superior", "ras"):
        m, origin = LPS_TO_RAS @ m, LPS_TO_RAS @ origin
    elif space not in ("left-posterior-superior", "lps"):
        raise InputError(f"'{p}' uses the unsupported NRRD space '{space}'. Save it from Slicer in LPS or RAS.")
    spacing = np.linalg.norm(m, axis=0)
    segments = _segments_from_header(hdr)
    if data.ndim == 4:
        merged = np.zeros(data.shape[1:], dtype=data.dtype)
        for s in segments:
            layer = data[int(s["layer"])]
            merged[layer == s["value"]] = s["value"]
        data = merged
    vol = Volume(data, tuple(spacing), tuple(origin), m / spacing, metadata={"source_path": str(p)})
    return _uncropped(vol, segments, hdr)


def _reference_geometry(hdr: dict[str, Any]) -> tuple[np.ndarray, list[int]] | None:
    """(IJK-to-LPS 4x4, extent) from the "Reference image geometry" conversion parameter, if any."""
    for item in str(hdr.get("Segmentation_ConversionParameters", "")).split("&"):
        name, _, rest = item.partition("|")
        if name != "Reference image geometry":
            continue
        try:
            nums = [float(x) for x in rest.partition("|")[0].split(";") if x.strip()]
        except ValueError:
            return None
        if len(nums) != 22:
            return None
        m = np.array(nums[:16]).reshape(4, 4)
        m[:3, :] = LPS_TO_RAS @ m[:3, :]
        return m, [int(x) for x in nums[16:]]
    return None


def _uncropped(vol: Volume, segments: list[dict], hdr: dict[str, Any]) -> tuple[Volume, list[dict]]:
    """A file cropped to its labels (Slicer's "crop to minimum extent") back on its full grid.

    The stored array's first voxel is at ``Segmentation_ReferenceImageExtentOffset`` of the
    reference grid ("Reference image geometry"); segment extents become full-grid indices.
    Without that geometry, or when the stored box does not lie on it, the file's own grid is
    returned (its voxels are still placed correctly in patient space)."""
    try:
        offset = np.array([int(x) for x in str(hdr.get("Segmentation_ReferenceImageExtentOffset", "0 0 0")).split()])
    except ValueError:
        offset = np.zeros(3, int)
    ref = _reference_geometry(hdr)
    if offset.shape != (3,) or ref is None:
        return vol, segments
    m, extent = ref
    lo = offset - np.array(extent[0::2])  # stored box start in full-grid array indices
    full = np.array(extent[1::2]) - np.array(extent[0::2]) + 1
    size = np.array(vol.size_ijk)
    same_axes = np.allclose(m[:3, :3], vol.ijk_to_lps()[:3, :3], atol=1e-4)
    corner = vol.physical_points((-lo)[None, :].astype(float))[0]  # where the full grid's voxel 0 lies
    if (not same_axes or np.any(lo < 0) or np.any(lo + size > full)
            or not np.allclose(corner, m[:3, :3] @ np.array(extent[0::2], float) + m[:3, 3], atol=1e-3)):
        return vol, segments
    if np.array_equal(lo, 0) and np.array_equal(size, full):
        return vol, segments
    arr = np.zeros(tuple(full[::-1]), dtype=vol.array.dtype)
    arr[lo[2]:lo[2] + size[2], lo[1]:lo[1] + size[1], lo[0]:lo[0] + size[0]] = vol.array
    out = Volume(arr, vol.spacing, tuple(corner), vol.direction.copy(), metadata=dict(vol.metadata))
    for s in segments:
        e = s["extent"]
        if len(e) == 6 and e[1] >= e[0]:
            s["extent"] = [int(x + lo[n // 2]) for n, x in enumerate(e)]
    return out, segments


def _segments_from_header(hdr: dict[str, Any]) -> list[dict]:
    out = []
    n = 0
    while f"Segment{n}_ID" in hdr:
        g = lambda k, d=None: hdr.get(f"Segment{n}_{k}", d)  # noqa: E731
        tags = {}
        for item in str(g("Tags", "")).split("|"):
            if ":" in item:
                k, v = item.split(":", 1)
                tags[k] = v
        out.append({
            "id": g("ID"), "name": g("Name", ""),
            "color": tuple(float(c) for c in str(g("Color", "0.5 0.5 0.5")).split()),
            "value": int(g("LabelValue", n + 1)), "layer": int(g("Layer", 0)),
            "extent": [int(x) for x in str(g("Extent", "0 -1 0 -1 0 -1")).split()],
            "tags": tags, "terminology": tags.get("TerminologyEntry", ""),
        })
        n += 1
    return out
