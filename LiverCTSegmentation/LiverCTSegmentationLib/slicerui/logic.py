"""LiverCTSegmentationLogic: MRML in, engine, MRML out. No GUI code, no dialogs.

Usable from Slicer's Python console::

    logic = LiverCTSegmentationLogic()
    segNode, stats = logic.process(getNode("CTLiver"))

Progress, warnings and errors are reported through ``progressCallback(fraction,
stage)``, ``warningCallback(text)`` (default: the Python log, so console users
see them) and ``LiverSegError`` exceptions; the widget decides how to show them.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Optional

try:  # In Slicer (or with Testing/slicer_fakes installed).
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
except ImportError:  # pragma: no cover - plain slicer-core without fakes
    class ScriptedLoadableModuleLogic:  # type: ignore[no-redef]
        def __init__(self, parent=None) -> None:
            pass

from . import mrml_convert, results_table
from .modelchoice import load_bundle

ProgressCallback = Callable[[float, str], None]
WarningCallback = Callable[[str], None]
TABLE_NODE_NAME_SUFFIX = " statistics"
TABLE_REFERENCE_ROLE = "LiverCTSegmentation.Statistics"


def overlays_available() -> bool:
    """True when matplotlib (used only for the batch overlay pictures) can be imported.

    Slicer does not ship matplotlib; batch runs then skip the .png previews
    instead of failing every case.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


class LiverCTSegmentationLogic(ScriptedLoadableModuleLogic):
    """Runs the engine on MRML nodes and writes editable segments + a statistics table."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.cancelEvent = threading.Event()
        self.lastWarnings: list[str] = []
        self.lastUncertaintyNode = None  # the last run's uncertainty volume (uncertainty=True)

    # ------------------------------------------------------------------ helpers
    def getParameterNode(self):  # noqa: N802 - Slicer naming
        from .parameters import LiverCTSegmentationParameterNode

        return LiverCTSegmentationParameterNode(super().getParameterNode())

    def cancel(self) -> None:
        """Ask a running ``process`` to stop at its next check point."""
        self.cancelEvent.set()

    @staticmethod
    def createSegmentationNode(inputVolumeNode, scene=None):
        scene = scene or inputVolumeNode.GetScene()
        seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{inputVolumeNode.GetName()} liver segmentation")
        seg.CreateDefaultDisplayNodes()
        return seg

    @staticmethod
    def statisticsTableNode(segmentationNode, tableNode=None):
        """The statistics table of ``segmentationNode``: ``tableNode`` if given, else its own.

        Each segmentation keeps its own table (created once, found again through a
        node reference), so segmenting another volume never overwrites earlier results.
        """
        if tableNode is None:
            tableNode = segmentationNode.GetNodeReference(TABLE_REFERENCE_ROLE)
        if tableNode is None:
            tableNode = segmentationNode.GetScene().AddNewNodeByClass(
                "vtkMRMLTableNode", segmentationNode.GetName() + TABLE_NODE_NAME_SUFFIX)
        if segmentationNode.GetNodeReferenceID(TABLE_REFERENCE_ROLE) != tableNode.GetID():
            segmentationNode.SetNodeReferenceID(TABLE_REFERENCE_ROLE, tableNode.GetID())
        return tableNode

    # ------------------------------------------------------------------ main API
    def process(self, inputVolumeNode, outputSegmentationNode=None, model: Any = None, device: str = "auto",
                fast: bool = False, roi=None, progressCallback: Optional[ProgressCallback] = None,
                perLesionSegments: bool = False, tableNode=None, warningCallback: Optional[WarningCallback] = None,
                uncertainty: bool = False):
        """Segment ``inputVolumeNode`` in this process (blocking).

        Returns ``(segmentationNode, statistics)``. Creates the segmentation node
        when ``outputSegmentationNode`` is None, and its own statistics table
        unless ``tableNode`` is given. Input-check and engine warnings go to
        ``warningCallback`` (default: ``logging.warning``) and are kept in
        ``self.lastWarnings``. Progress fractions never decrease. Raises
        ``LiverSegError`` subclasses with user-readable messages (``Cancelled``
        after ``cancel()``).

        ``uncertainty``: also compute the test-time-augmentation uncertainty map (4 more passes of
        the last stage), import it as ``self.lastUncertaintyNode`` and add the confidence score to
        the statistics table.
        """
        from ..engine import checks, pipeline
        from ..engine.progress import Progress
        from .stages import IMPORT_FRACTION, MonotonicProgress

        if inputVolumeNode is None:
            from ..engine.errors import InputError

            raise InputError("Select an input CT volume.")
        self.cancelEvent.clear()
        self.lastWarnings = []
        progress = MonotonicProgress(progressCallback)
        volume = mrml_convert.volume_from_node(inputVolumeNode)
        warnings = list(checks.check_volume(volume) or [])
        bundle = load_bundle(model)
        options = pipeline.SegmentOptions(device=device or "auto", fast=bool(fast),
                                          roi_lps=mrml_convert.roi_to_lps_box(roi, inputVolumeNode),
                                          uncertainty=bool(uncertainty))
        result = pipeline.segment(volume, bundle, options, progress=Progress(progress.engine, self.cancelEvent))
        warnings += [w for w in (result.warnings or []) if w not in warnings]
        self._reportWarnings(warnings, warningCallback)
        progress(IMPORT_FRACTION, "importing")
        statistics = result.statistics
        if result.confidence is not None:  # a new dict: the engine's statistics object stays as it was
            statistics = dict(results_table.statistics_dict(statistics), confidence=float(result.confidence))
        segNode = self.importResult(inputVolumeNode, result.labelmap, bundle.labels, statistics,
                                    outputSegmentationNode, perLesionSegments=perLesionSegments,
                                    modelName=f"{bundle.name} {bundle.version}", tableNode=tableNode,
                                    uncertainty=result.maps.get("uncertainty"))
        progress(1.0, "done")
        return segNode, result.statistics

    def _reportWarnings(self, warnings: list[str], warningCallback: Optional[WarningCallback]) -> None:
        self.lastWarnings = list(warnings)
        for w in warnings:
            if warningCallback is not None:
                warningCallback(w)
            else:
                logging.warning("Liver CT Segmentation: %s", w)

    def importResult(self, inputVolumeNode, labelmap, labels, statistics=None, outputSegmentationNode=None,
                     perLesionSegments: bool = False, modelName: str = "", tableNode=None, uncertainty=None):
        """Engine labelmap (input grid) -> segmentation node (+ statistics table, + the uncertainty
        map as ``self.lastUncertaintyNode`` when given).

        Shared by ``process`` and the background runner. Follows the reuse
        policy in ``mrml_convert`` (edited segments are never overwritten).
        """
        segNode = outputSegmentationNode
        created = segNode is None
        if created:
            segNode = self.createSegmentationNode(inputVolumeNode)
        lesion_ids = None
        if perLesionSegments:
            from ..engine import statistics as engine_statistics

            lesion_ids = engine_statistics.label_lesions(labelmap)
        mrml_convert.import_labelmap(labelmap, segNode, inputVolumeNode, mrml_convert.labels_from_any(labels),
                                     lesion_ids=lesion_ids, model_name=modelName)
        if created:
            mrml_convert.place_in_subject_hierarchy(segNode, inputVolumeNode)
        segNode.CreateClosedSurfaceRepresentation()
        if statistics is not None:
            results_table.update_table_node(self.statisticsTableNode(segNode, tableNode), statistics)
        self.lastUncertaintyNode = (mrml_convert.import_uncertainty(uncertainty, inputVolumeNode)
                                    if uncertainty is not None else None)
        return segNode

    def processFiles(self, pathsOrFolder, outputFolder, model: Any = None, device: str = "auto", fast: bool = False,
                     progressCallback: Optional[ProgressCallback] = None, resume: bool = True,
                     overlay: Optional[bool] = None, ray: Optional[str] = None):
        """Batch-segment files/folders to ``outputFolder`` (no scene changes); see ``batch.run_batch``.
        ``ray``: spread the cases over Ray workers (``batch.run_batch_ray``): "local" (this computer),
        "auto" or "ray://HOST:10001" (a cluster; inputs and output on storage its nodes see).

        Writes ``report.csv``; a second call resumes (finished cases are skipped).
        ``overlay``: write .png previews; None = only when matplotlib is installed
        (Slicer does not ship it), with a logged note when they are skipped.
        Returns the per-case results.
        """
        from .. import batch
        from ..engine.progress import Progress

        self.cancelEvent.clear()
        if overlay is None:
            overlay = overlays_available()
            if not overlay:
                logging.info("Liver CT Segmentation: matplotlib is not installed, so no overlay pictures (.png) are "
                             "written. Install it (pip_install('matplotlib')) to get them.")
        inputs = [pathsOrFolder] if isinstance(pathsOrFolder, (str, os.PathLike)) else list(pathsOrFolder)
        options = batch.BatchOptions(device=device or "auto", fast=bool(fast), overlay=bool(overlay))
        runner, extra = (batch.run_batch, {}) if ray is None else (batch.run_batch_ray, {"address": ray})
        return runner(inputs, outputFolder, options=options, bundle=load_bundle(model),
                      progress=Progress(progressCallback, self.cancelEvent), resume=resume,
                      cancel_event=self.cancelEvent, **extra)
