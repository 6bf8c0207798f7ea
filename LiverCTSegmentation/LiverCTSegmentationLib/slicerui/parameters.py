"""Typed parameter node of the module (saved with the scene)."""
from __future__ import annotations

from typing import Annotated

from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper

DEVICES = ("auto", "cpu", "cuda", "mps")


@parameterNodeWrapper
class LiverCTSegmentationParameterNode:
    """
    inputVolume - CT volume to segment (scalar volume, not a labelmap).
    outputSegmentation - result segmentation; a new one is created when empty.
    model - model key ("" = default, registry name, or bundle folder).
    device - "auto" picks CUDA/MPS when available, else CPU.
    fast - lower resolution, quicker, less accurate.
    roi - optional box restricting where the liver is searched for.
    perLesionSegments - one segment per tumour instead of one "Liver tumor" segment.
    uncertainty - also compute a test-time-augmentation uncertainty map (shown over the slices) and a confidence score.
    resultsTable - statistics table shown in the panel.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    model: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    fast: bool = False
    roi: vtkMRMLMarkupsROINode
    perLesionSegments: bool = False
    uncertainty: bool = False
    resultsTable: vtkMRMLTableNode
