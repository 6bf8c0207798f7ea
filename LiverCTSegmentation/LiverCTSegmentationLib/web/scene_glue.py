"""MRML side of the web app: CT into the scene, segments <-> engine labelmap.

Segment names, colours, terminology and tags come from
``slicerui.mrml_convert.import_labelmap`` (shared with the Slicer module);
this file only adds what the browser app needs on top: putting an engine
``Volume`` into a scene without Qt, and reading the (edited) segments back
as one uint8 labelmap on the CT's grid.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

from ..engine.volume import Volume
from ..slicerui import mrml_convert


def add_volume_node(scene, vol: Volume, name: str):
    """Engine ``Volume`` -> new scalar volume node (geometry via IJK->RAS, like the Slicer module)."""
    import slicer.util

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(mrml_convert._vtk_matrix(vol.ijk_to_ras()))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(vol.array))
    node.CreateDefaultDisplayNodes()
    return node


def segment_label_value(segment, name: str, tumor_value: int = 2) -> int:
    """Output label of a segment: our tag first (``"1"``, ``"2"``, ``"2.3"``), else by name, else 0 (ignored)."""
    tag = mrml_convert.get_tag(segment, mrml_convert.LABEL_VALUE_TAG)
    if tag:
        try:
            return int(tag.split(".")[0])
        except ValueError:
            pass
    low = name.strip().lower()
    if low.startswith("liver tumor") or low.startswith("liver tumour"):
        return tumor_value
    if low == "liver" or low.startswith("liver ("):
        return 1
    return 0


def compose_labelmap(reference: Volume, masks: Iterable[tuple[int, np.ndarray]], tumor_value: int = 2) -> Volume:
    """Binary masks with label values -> one uint8 labelmap on ``reference``'s grid (tumour wins overlaps)."""
    out = np.zeros(reference.array.shape, dtype=np.uint8)
    ordered = sorted(masks, key=lambda vm: vm[0] == tumor_value)  # tumour last so it is not painted over
    for value, mask in ordered:
        if value <= 0:
            continue
        m = np.asarray(mask)
        if m.shape != out.shape:
            raise ValueError(f"segment mask shape {m.shape} is not the CT grid {out.shape}")
        out[m > 0] = value
    return reference.with_array(out)


def segment_mask(segmentation_node, segment_id: str, volume_node) -> Optional[np.ndarray]:
    """One segment as a (K, J, I) uint8 array on the volume's grid; None when it has no voxels.

    ``slicer.util.arrayFromSegmentBinaryLabelmap`` needs ``slicer.mrmlScene`` and
    ``slicer.modules`` (Slicer application only), so call the static logic directly.
    """
    import slicer
    import slicer.util
    import vtk

    scene = segmentation_node.GetScene()
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__liverseg_web_export__")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, node, volume_node)
        if not ok or node.GetImageData() is None:
            return None
        return np.array(slicer.util.arrayFromVolume(node), dtype=np.uint8, copy=True)
    finally:
        if node.GetDisplayNode() is not None:
            scene.RemoveNode(node.GetDisplayNode())
        scene.RemoveNode(node)


def remove_unedited_segments(segmentation_node, volume_node) -> int:
    """Drop segments this module created and nobody edited since (checksum tag still matches).

    Mirrors the Slicer module's replace policy before a re-run: edited or
    user-made segments stay, so user edits are never lost.
    """
    seg = segmentation_node.GetSegmentation()
    doomed = []
    for n in range(seg.GetNumberOfSegments()):
        sid = seg.GetNthSegmentID(n)
        segment = seg.GetSegment(sid)
        if mrml_convert.get_tag(segment, mrml_convert.CREATED_BY_TAG) != mrml_convert.CREATED_BY_VALUE:
            continue
        mask = segment_mask(segmentation_node, sid, volume_node)
        current = mrml_convert.mask_checksum(mask if mask is not None else np.zeros(volume_shape(volume_node), np.uint8))
        if current == mrml_convert.get_tag(segment, mrml_convert.CHECKSUM_TAG):
            doomed.append(sid)
    for sid in doomed:
        seg.RemoveSegment(sid)
    return len(doomed)


def volume_shape(volume_node) -> tuple[int, int, int]:
    i, j, k = volume_node.GetImageData().GetDimensions()
    return (k, j, i)


def labelmap_from_segmentation(segmentation_node, volume_node, reference: Volume) -> Volume:
    """Current segments (after any edits) -> uint8 labelmap exactly on the CT grid."""
    seg = segmentation_node.GetSegmentation()
    masks = []
    for n in range(seg.GetNumberOfSegments()):
        sid = seg.GetNthSegmentID(n)
        segment = seg.GetSegment(sid)
        value = segment_label_value(segment, segment.GetName())
        if value == 0:
            continue
        arr = segment_mask(segmentation_node, sid, volume_node)
        if arr is None:
            continue
        masks.append((value, arr))
    return compose_labelmap(reference, masks)
