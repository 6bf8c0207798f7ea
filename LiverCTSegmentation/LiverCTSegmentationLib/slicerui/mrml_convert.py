"""MRML <-> engine conversions: volume node -> ``Volume``, labelmap ``Volume`` -> segments.

Everything here works with Slicer's core only (MRML nodes, the Segmentations
logic and ``slicer.util`` array helpers), so it runs in the Slicer application
and in CI with the ``slicer-core`` wheel. No Qt, no dialogs.

Policy for a reused segmentation node (documented in the module help too):
segments are matched by name. An existing segment is *replaced* only when this
module created it (tag ``LiverCTSegmentation.CreatedBy``) *and* its voxels are
exactly what this module wrote (tag ``LiverCTSegmentation.Checksum`` still
matches). Anything else (a user-made segment, or one of ours the user edited)
is left untouched and the new result is added as a new segment with a suffix,
e.g. ``Liver (2)``. User edits are therefore never overwritten.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import numpy as np

CREATED_BY_TAG = "LiverCTSegmentation.CreatedBy"
CHECKSUM_TAG = "LiverCTSegmentation.Checksum"
LABEL_VALUE_TAG = "LiverCTSegmentation.LabelValue"
MODEL_TAG = "LiverCTSegmentation.Model"
CREATED_BY_VALUE = "LiverCTSegmentation"

TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

# Used when a bundle's label has no terminology (keeps segments well-formed).
_FALLBACK_CATEGORY = ("SCT", "85756007", "Tissue")
_FALLBACK_TYPE = ("SCT", "85756007", "Tissue")


# --------------------------------------------------------------------------- geometry
def ijk_to_ras_array(volumeNode) -> np.ndarray:
    """The node's IJK->RAS matrix as a 4x4 numpy array (parent transforms excluded)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_from_node(volumeNode):
    """Scalar volume node -> engine ``Volume`` (a copy; the node is not modified).

    ``arrayFromVolume`` is (K, J, I) like the engine; the geometry goes through
    the node's IJK->RAS matrix so oblique volumes keep their directions.
    """
    import slicer

    from ..engine.errors import InputError
    from ..engine.volume import Volume

    if volumeNode is None or volumeNode.GetImageData() is None:
        raise InputError("The input volume has no image data. Load a CT volume and select it as input.")
    arr = slicer.util.arrayFromVolume(volumeNode)
    if arr.ndim != 3:
        raise InputError(
            f"The input volume has {arr.ndim - 3} extra component axis; select a single-component (grayscale) CT volume."
        )
    return Volume.from_ijk_to_ras(np.array(arr, copy=True), ijk_to_ras_array(volumeNode),
                                  metadata={"name": volumeNode.GetName()})


def roi_to_lps_box(roiNode, volumeNode=None) -> Optional[tuple[tuple[float, ...], tuple[float, ...]]]:
    """Markups ROI -> ``(lo, hi)`` LPS box in the input volume's own (untransformed) space."""
    if roiNode is None:
        return None
    import vtk

    b = [0.0] * 6
    roiNode.GetRASBounds(b)  # world coordinates
    if b[0] > b[1]:
        return None
    corners = np.array([[x, y, z, 1.0] for x in b[0:2] for y in b[2:4] for z in b[4:6]])
    if volumeNode is not None and volumeNode.GetParentTransformNode() is not None:
        import slicer

        worldToLocal = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volumeNode.GetParentTransformNode(), worldToLocal)
        corners = np.array([list(worldToLocal.TransformPoint(c[:3])) + [1.0] for c in corners])
    lps = corners[:, :3] * np.array([-1.0, -1.0, 1.0])
    return tuple(lps.min(axis=0).tolist()), tuple(lps.max(axis=0).tolist())


# -------------------------------------------------------------------------- terminology
def _code(triplet: Optional[Sequence[str]]) -> str:
    if not triplet:
        return "^^"
    scheme, value, meaning = (list(triplet) + ["", "", ""])[:3]
    return f"{scheme}^{value}^{meaning}"


def terminology_string(terminology: Optional[dict]) -> str:
    """model.json terminology dict -> Slicer's serialized terminology entry.

    Format (vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry):
    ``context~category~type~typeModifier~anatomicContext~region~regionModifier``,
    each code as ``scheme^value^meaning``.
    """
    t = terminology or {}
    category = t.get("category") or _FALLBACK_CATEGORY
    typ = t.get("type") or _FALLBACK_TYPE
    region = t.get("region")
    return "~".join([
        TERMINOLOGY_CONTEXT,
        _code(category),
        _code(typ),
        _code(t.get("type_modifier") or t.get("modifier")),
        ANATOMIC_CONTEXT if region else "",
        _code(region),
        _code(t.get("region_modifier")),
    ])


def mask_checksum(mask: np.ndarray) -> str:
    """Content fingerprint of a binary mask (shape + set voxels)."""
    m = np.ascontiguousarray(np.asarray(mask) > 0)
    h = hashlib.sha256(str(m.shape).encode())
    h.update(np.packbits(m).tobytes())
    return h.hexdigest()


# -------------------------------------------------------------------------- segments
@dataclass
class SegmentSpec:
    """One output segment: the voxels where ``labelmap == value``."""

    value: int
    name: str
    color: tuple[float, float, float]  # 0..1
    terminology: str
    voxels: int = 0
    extra_tags: dict = field(default_factory=dict)


def segment_specs(labels: Iterable[dict], labelmap_array: np.ndarray, lesion_ids: Optional[np.ndarray] = None,
                  tumor_value: int = 2) -> tuple[list[SegmentSpec], np.ndarray]:
    """Build the segment list and the matching 1..N labelmap to import.

    With ``lesion_ids`` (per-lesion mode), the tumour label is split into one
    segment per connected lesion (``Liver tumor 1``, ``Liver tumor 2``...).
    Returns ``(specs, relabelled)`` where ``relabelled`` is uint16 with value
    ``spec.value`` for each spec (specs with no voxels are still returned so
    that an empty, editable segment is created).
    """
    labels = sorted(labels, key=lambda d: int(d["value"]))
    out = np.zeros(labelmap_array.shape, dtype=np.uint16)
    specs: list[SegmentSpec] = []
    nxt = 1
    for lab in labels:
        value = int(lab["value"])
        rgb = tuple(float(c) / 255.0 for c in (lab.get("color") or (128, 128, 128))[:3])
        term = terminology_string(lab.get("terminology"))
        name = str(lab.get("name") or f"Label {value}")
        mask = labelmap_array == value
        if lesion_ids is not None and value == tumor_value and mask.any():
            n = int(lesion_ids.max())
            for idx in range(1, n + 1):
                lm = (lesion_ids == idx) & mask
                if not lm.any():
                    continue
                # Vary brightness a little so neighbouring lesions are distinguishable.
                f = 1.0 - 0.35 * ((idx - 1) % 4) / 3.0
                out[lm] = nxt
                specs.append(SegmentSpec(nxt, f"{name} {idx}", tuple(c * f for c in rgb), term, int(lm.sum()),
                                         {LABEL_VALUE_TAG: f"{value}.{idx}"}))
                nxt += 1
            continue
        out[mask] = nxt
        specs.append(SegmentSpec(nxt, name, rgb, term, int(mask.sum()), {LABEL_VALUE_TAG: str(value)}))
        nxt += 1
    return specs, out


def _segment_names(segmentation) -> dict[str, str]:
    ids = {}
    for i in range(segmentation.GetNumberOfSegments()):
        sid = segmentation.GetNthSegmentID(i)
        ids[segmentation.GetSegment(sid).GetName()] = sid
    return ids


def _is_replaceable(segmentationNode, segmentId: str, referenceVolumeNode) -> bool:
    """True only for an unedited segment this module created."""
    import slicer

    seg = segmentationNode.GetSegmentation().GetSegment(segmentId)
    tags = {tag: get_tag(seg, tag) for tag in (CREATED_BY_TAG, CHECKSUM_TAG)}
    if tags[CREATED_BY_TAG] != CREATED_BY_VALUE or not tags[CHECKSUM_TAG]:
        return False
    try:
        current = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode)
    except Exception:  # noqa: BLE001 - any failure means "do not touch it"
        return False
    return mask_checksum(current) == tags[CHECKSUM_TAG]


def get_tag(segment, name: str) -> str:
    """A segment tag's value, or "" when absent (``vtkSegment.GetTag`` fills a reference)."""
    import vtk

    holder = vtk.reference("")
    return str(holder) if segment.GetTag(name, holder) else ""


def _unique_name(base: str, taken: set[str]) -> str:
    n = 2
    while f"{base} ({n})" in taken:
        n += 1
    return f"{base} ({n})"


UNCERTAINTY_COLOR_ID = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"


def import_labelmap(labelmap, segmentationNode, referenceVolumeNode, labels: Iterable[dict],
                    lesion_ids: Optional[np.ndarray] = None, model_name: str = "", tumor_value: int = 2) -> list[str]:
    """Write an engine labelmap (on the reference volume's grid) into a segmentation node.

    Sets the reference geometry, copies the reference volume's parent
    transform, creates/replaces segments following the module's policy (see
    module docstring), sets names, colours, terminology and module tags, and
    returns the segment IDs in label order.
    """
    import slicer
    import vtk

    scene = segmentationNode.GetScene()
    arr = np.asarray(labelmap.array)
    specs, relabelled = segment_specs(labels, arr, lesion_ids, tumor_value)

    if segmentationNode.GetDisplayNode() is None:
        segmentationNode.CreateDefaultDisplayNodes()
    # Same parent transform first, so the import below does not resample.
    segmentationNode.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    segmentation = segmentationNode.GetSegmentation()

    existing = _segment_names(segmentation)
    taken = set(existing)
    target_ids: list[str] = []
    for spec in specs:
        sid = None
        if spec.name in existing and _is_replaceable(segmentationNode, existing[spec.name], referenceVolumeNode):
            sid = existing[spec.name]
        else:
            if spec.name in taken:
                spec.name = _unique_name(spec.name, taken)
            sid = segmentation.GenerateUniqueSegmentID(spec.name)
            segmentation.AddEmptySegment(sid, spec.name, list(spec.color))
        taken.add(spec.name)
        target_ids.append(sid)

    present = [i for i, s in enumerate(specs) if s.voxels > 0]
    if present:
        # ImportLabelmapToSegmentationNode maps the label values present, in
        # ascending order, onto the given IDs: make them exactly 1..N.
        compact = np.zeros(relabelled.shape, dtype=np.uint16)
        for n, i in enumerate(present, start=1):
            compact[relabelled == specs[i].value] = n
        labelNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__LiverCTSegmentation_temp__")
        try:
            labelNode.SetIJKToRASMatrix(_vtk_matrix(labelmap.ijk_to_ras()))
            labelNode.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
            slicer.util.updateVolumeFromArray(labelNode, compact)
            ids = vtk.vtkStringArray()
            for i in present:
                ids.InsertNextValue(target_ids[i])
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, segmentationNode, ids)
            if not ok:
                from ..engine.errors import OutputError

                raise OutputError("Slicer could not import the segmentation result into the segmentation node.")
        finally:
            if labelNode.GetDisplayNode() is not None:
                scene.RemoveNode(labelNode.GetDisplayNode())
            scene.RemoveNode(labelNode)

    for spec, sid in zip(specs, target_ids):
        seg = segmentation.GetSegment(sid)
        seg.SetName(spec.name)
        seg.SetColor(*spec.color)
        seg.SetTag(seg.GetTerminologyEntryTagName(), spec.terminology)
        seg.SetTag(CREATED_BY_TAG, CREATED_BY_VALUE)
        seg.SetTag(CHECKSUM_TAG, mask_checksum(relabelled == spec.value))
        if model_name:
            seg.SetTag(MODEL_TAG, model_name)
        for k, v in spec.extra_tags.items():
            seg.SetTag(k, v)
        if spec.voxels == 0:
            # Replaced segment whose new result is empty: clear it.
            _clear_segment(segmentationNode, sid, referenceVolumeNode)
    return target_ids


def import_uncertainty(uncertainty, referenceVolumeNode, name: str = ""):
    """The engine's uncertainty map (uint8 0-255 on the reference grid) as a scalar volume node
    coloured from transparent-low to hot-high, ready to show over the CT; reuses a node of that name."""
    import slicer

    scene = referenceVolumeNode.GetScene()
    name = name or f"{referenceVolumeNode.GetName()} uncertainty"
    node = scene.GetFirstNodeByName(name)
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(_vtk_matrix(uncertainty.ijk_to_ras()))
    node.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(uncertainty.array, dtype=np.uint8))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    color = scene.GetNodeByID(UNCERTAINTY_COLOR_ID)
    if color is not None:
        display.SetAndObserveColorNodeID(color.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0, 255)
    display.SetLowerThreshold(26)  # normalised entropy < 0.1: left transparent over the CT
    display.SetUpperThreshold(255)
    display.ApplyThresholdOn()
    return node


def _clear_segment(segmentationNode, segmentId: str, referenceVolumeNode) -> None:
    import slicer

    try:
        cur = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode)
    except Exception:  # noqa: BLE001 - an empty segment cannot be exported; nothing to clear
        return
    if cur.any():
        slicer.util.updateSegmentBinaryLabelmapFromArray(np.zeros_like(cur, dtype=np.uint8), segmentationNode,
                                                         segmentId, referenceVolumeNode)


def _vtk_matrix(a: np.ndarray):
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def place_in_subject_hierarchy(segmentationNode, referenceVolumeNode) -> None:
    """Put the segmentation next to its input (same study/parent item)."""
    import slicer

    scene = segmentationNode.GetScene()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        return
    volItem = sh.GetItemByDataNode(referenceVolumeNode)
    if not volItem:
        return
    parent = sh.GetItemParent(volItem)
    if not parent:
        return
    segItem = sh.GetItemByDataNode(segmentationNode)
    if not segItem:  # normally created by the Subject Hierarchy module when the node is added
        segItem = sh.CreateItem(parent, segmentationNode)
    if parent != sh.GetSceneItemID():
        sh.SetItemParent(segItem, parent)


def labels_from_any(labels: Any) -> list[dict]:
    """Accept bundle labels as list of dicts or objects with value/name/color/terminology."""
    out = []
    for lab in labels:
        if isinstance(lab, dict):
            out.append(lab)
        else:
            out.append({k: getattr(lab, k, None) for k in ("value", "name", "color", "terminology")})
    return out
