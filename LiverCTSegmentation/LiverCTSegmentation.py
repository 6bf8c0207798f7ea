"""Liver CT Segmentation: one click from an abdominal CT to editable liver and tumor segments.

Thin module file (Slicer convention): metadata, sample data and the self-test
live here; the panel, logic and background runner are in
``LiverCTSegmentationLib/slicerui``; the Slicer-free engine is in
``LiverCTSegmentationLib/engine``.
"""
import os

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

from LiverCTSegmentationLib.slicerui.logic import LiverCTSegmentationLogic  # noqa: F401 - Slicer looks it up here

try:
    from LiverCTSegmentationLib.slicerui.widget import LiverCTSegmentationWidget  # noqa: F401
except ImportError:  # pragma: no cover - no Qt (e.g. slicer-core tests); the module still loads
    LiverCTSegmentationWidget = None

CTLIVER_SHA256 = "e16eae0ae6fefa858c5c11e58f0f1bb81834d81b7102e021571056324ef6f37e"


class LiverCTSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Liver CT Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LiverCTSegmentation contributors"]
        self.parent.helpText = _(
            "Segments the liver and liver tumors in an abdominal CT with one click and creates editable "
            "segments (Segment Editor) plus a statistics table (liver volume, tumor count, volumes, diameters, "
            "tumor burden).<br><br>"
            "Select the CT volume and press <b>Apply</b>; the segmentation runs in a background process and can be "
            "cancelled. Optionally restrict the search with an ROI, or tick <i>Fast</i> for a lower-resolution run.<br><br>"
            "<b>Re-running into an existing segmentation</b> never overwrites your edits: a segment is replaced only if "
            "this module created it and it was not modified since; otherwise the new result is added as a new segment "
            "(e.g. 'Liver (2)').<br><br>"
            "<b>The default model (liverct-real) was trained on only three public CTs</b>: on unseen scans its liver "
            "Dice was 0.64-0.85 and its tumour output is unreliable (see its model card). Always review and edit the "
            "result. Load a stronger model bundle with <i>Model: Load from disk…</i>.<br>"
            "<b>For research use only. Not a medical device; not for diagnosis or treatment decisions.</b><br><br>"
            "Batch processing of files and folders: <code>logic.processFiles(folder, outputFolder)</code> or the "
            "<code>liverseg</code> command line."
        )
        self.parent.acknowledgementText = _(
            "The default model was trained on the CHAOS challenge CT sample (CC-BY-SA 4.0), LiTS case 117 "
            "(CC-BY-NC-SA 4.0, non-commercial) and TotalSegmentator's example CT (Apache-2.0). "
            "Model training code builds on public liver CT datasets: LiTS (Liver Tumor Segmentation Challenge, "
            "Bilic et al., Medical Image Analysis 2023), the Medical Segmentation Decathlon Task03 Liver (Antonelli "
            "et al., Nature Communications 2022; also the source of Slicer's CTLiver sample), CHAOS (Kavur et al., "
            "Medical Image Analysis 2021) and TotalSegmentator (Wasserthal et al., Radiology: AI 2023). Project "
            "structure and reproducibility practices follow mlf-core (Heumos et al.). Each dataset keeps its own "
            "license; check it before using a model trained on it."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Bundled phantom CT (made by our own generator) and Slicer's CTLiver sample."""
    import SampleData

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    icon = os.path.join(iconsPath, "LiverCTSegmentation.png")
    phantom = os.path.join(os.path.dirname(__file__), "Resources", "Samples", "phantom_ct.nii.gz")
    if os.path.exists(phantom):
        from pathlib import Path

        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="Liver CT Segmentation",
            sampleName="LiverPhantomCT",
            thumbnailFileName=icon,
            uris=Path(phantom).as_uri(),
            fileNames="phantom_ct.nii.gz",
            nodeNames="LiverPhantomCT",
            checksums=None,
        )
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Liver CT Segmentation",
        sampleName="CTLiver",
        thumbnailFileName=icon,
        uris="https://github.com/Slicer/SlicerTestingData/releases/download/SHA256/" + CTLIVER_SHA256,
        fileNames="CTLiver.nrrd",
        nodeNames="CTLiver",
        checksums="SHA256:" + CTLIVER_SHA256,
    )


class LiverCTSegmentationTest(ScriptedLoadableModuleTest):
    """In-Slicer self-test (Reload and Test, ctest): logic on a phantom volume."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_logic_on_phantom()

    def test_logic_on_phantom(self):
        from LiverCTSegmentationLib.engine import pipeline
        from LiverCTSegmentationLib.engine.phantom import make_phantom
        from LiverCTSegmentationLib.slicerui import mrml_convert
        from LiverCTSegmentationLib.slicerui.modelchoice import load_bundle

        self.delayDisplay("Creating phantom volume")
        ct, _label = make_phantom(0, shape_kji=(48, 64, 64), spacing=(4.0, 4.0, 4.0), orientation="oblique")
        volumeNode = slicer.util.addVolumeFromArray(ct.array, ct.ijk_to_ras(), name="phantom")
        bundle = load_bundle(None)

        self.delayDisplay("Segmenting")
        logic = LiverCTSegmentationLogic()
        segNode, stats = logic.process(volumeNode, model=bundle, device="cpu")
        expected = pipeline.segment(mrml_convert.volume_from_node(volumeNode), bundle,
                                    pipeline.SegmentOptions(device="cpu")).labelmap

        segmentation = segNode.GetSegmentation()
        names = [segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName()
                 for i in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(names, [lab["name"] for lab in bundle.labels])
        self.assertIs(segNode.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()),
                      volumeNode)
        for lab in bundle.labels:
            sid = segmentation.GetSegmentIdBySegmentName(lab["name"])
            arr = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, sid, volumeNode)
            self.assertEqual(arr.shape, ct.array.shape)
            self.assertEqual(int(arr.sum()), int((expected.array == lab["value"]).sum()))
        self.assertGreaterEqual(stats.liver_ml, 0.0)
        self.delayDisplay("Test passed")
