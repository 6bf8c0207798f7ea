"""Liver CT Segmentation: one click from an abdominal CT to editable liver and tumor segments.

Thin module file (Slicer convention): metadata, sample data and the self-test
live here; the panel, logic and background runner are in
``LiverCTSegmentationLib/slicerui``; the Slicer-free engine is in
``LiverCTSegmentationLib/engine``.
"""
import importlib.util
import os
import unittest

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
            "<b>The default model (liverct 1.2) was trained on only three public CTs</b> plus CTs synthesised from 16 "
            "patients' anatomy maps: on CTs it never saw its liver Dice was 0.91-0.92, it found about a third of the "
            "tumours and called some vessels and bowel tumours, so its tumour output is unreliable (see its model "
            "card). Always review and edit the result. Load a stronger model bundle (its folder or a .zip) with "
            "<i>Model: Load from disk…</i>.<br>"
            "<b>For research use only. Not a medical device; not for diagnosis or treatment decisions.</b><br><br>"
            "Batch processing of files and folders: <code>logic.processFiles(folder, outputFolder)</code> or the "
            "<code>liverseg</code> command line."
        )
        self.parent.acknowledgementText = _(
            "The default model was trained on the CHAOS challenge CT sample (CC-BY-SA 4.0), LiTS case 117 "
            "(CC-BY-NC-SA 4.0, non-commercial), TotalSegmentator's example CT (Apache-2.0) and CTs synthesised from "
            "the 3D-IRCADb-01 anatomy maps (IRCAD France, CC-BY-NC-ND 4.0): use it for non-commercial research only. "
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


def missingSelfTestDependencies() -> list:
    """Packages the self-test needs that are not importable (torch comes from the PyTorch extension)."""
    missing = []
    for name in ("torch", "safetensors"):
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):  # broken or half-imported package
            missing.append(name)
    return missing


class LiverCTSegmentationTest(ScriptedLoadableModuleTest):
    """In-Slicer self-test (Reload and Test, ctest): logic on phantom volumes + segment geometry.

    Skipped (with the reason shown) when PyTorch is not installed yet.
    """

    def setUp(self):
        missing = missingSelfTestDependencies()
        if missing:
            self.skipTest(
                "Liver CT Segmentation self-test skipped: " + ", ".join(missing) + " not installed. Install PyTorch "
                "(PyTorch extension) and press 'Install dependencies' in the module panel, then run the test again.")
        slicer.mrmlScene.Clear()

    def runTest(self):
        try:
            self.setUp()
        except unittest.SkipTest as e:  # Reload and Test calls runTest directly: show why, do not fail
            self.delayDisplay(str(e))
            return
        self.test_logic_on_phantom()
        self.setUp()
        self.test_geometry_with_parent_transform()

    # ------------------------------------------------------------------ helpers
    def _phantomVolume(self, seed=0):
        from LiverCTSegmentationLib.synthetic.phantom import make_phantom

        ct, _label = make_phantom(seed, shape_kji=(48, 64, 64), spacing=(4.0, 4.0, 4.0), orientation="oblique")
        return ct, slicer.util.addVolumeFromArray(ct.array, ct.ijk_to_ras(), name="phantom")

    def assertMatrixAlmostEqual(self, a, b, tol=1e-4, msg=""):
        for r in range(4):
            for c in range(4):
                self.assertAlmostEqual(a.GetElement(r, c), b.GetElement(r, c), delta=tol, msg=f"{msg} [{r},{c}]")

    def assertGeometryMatchesVolume(self, segNode, volumeNode):
        """Reference geometry and every segment's labelmap lie on the volume's own voxel grid."""
        import vtk

        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        self.assertIs(segNode.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()),
                      volumeNode)
        self.assertEqual(segNode.GetTransformNodeID(), volumeNode.GetTransformNodeID())
        converter = slicer.vtkSegmentationConverter
        geometry = segNode.GetSegmentation().GetConversionParameter(converter.GetReferenceImageGeometryParameterName())
        reference = slicer.vtkOrientedImageData()
        self.assertTrue(converter.DeserializeImageGeometry(geometry, reference, False), geometry)
        referenceMatrix = vtk.vtkMatrix4x4()
        reference.GetImageToWorldMatrix(referenceMatrix)
        self.assertMatrixAlmostEqual(referenceMatrix, ijkToRas, msg="reference geometry")
        self.assertEqual(tuple(reference.GetExtent()), tuple(volumeNode.GetImageData().GetExtent()))
        segmentation = segNode.GetSegmentation()
        checked = 0
        for i in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(i)
            labelmap = slicer.vtkOrientedImageData()
            segNode.GetBinaryLabelmapRepresentation(segmentId, labelmap)
            if labelmap.IsEmpty():  # an empty segment has no grid of its own
                continue
            labelmapMatrix = vtk.vtkMatrix4x4()
            labelmap.GetImageToWorldMatrix(labelmapMatrix)
            self.assertMatrixAlmostEqual(labelmapMatrix, ijkToRas, msg=f"segment {segmentId}")
            checked += 1
        self.assertGreater(checked, 0, "no non-empty segment to check")

    # ------------------------------------------------------------------ tests
    def test_logic_on_phantom(self):
        from LiverCTSegmentationLib.engine import pipeline
        from LiverCTSegmentationLib.slicerui import mrml_convert
        from LiverCTSegmentationLib.slicerui.modelchoice import load_bundle

        self.delayDisplay("Creating phantom volume")
        ct, volumeNode = self._phantomVolume()
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
        self.assertGeometryMatchesVolume(segNode, volumeNode)
        for lab in bundle.labels:
            sid = segmentation.GetSegmentIdBySegmentName(lab["name"])
            arr = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, sid, volumeNode)
            self.assertEqual(arr.shape, ct.array.shape)
            self.assertEqual(int(arr.sum()), int((expected.array == lab["value"]).sum()))
        self.assertGreaterEqual(stats.liver_ml, 0.0)
        self.delayDisplay("Test passed")

    def test_geometry_with_parent_transform(self):
        """A volume under a sheared linear transform: the segmentation follows it without resampling."""
        import numpy as np
        import vtk

        from LiverCTSegmentationLib.slicerui.modelchoice import load_bundle

        self.delayDisplay("Segmenting a transformed volume")
        _ct, volumeNode = self._phantomVolume(seed=1)
        transformNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
        matrix = vtk.vtkMatrix4x4()
        matrix.SetElement(0, 3, 25.0)
        matrix.SetElement(2, 3, -12.0)
        matrix.SetElement(0, 1, 0.15)
        transformNode.SetMatrixTransformToParent(matrix)
        volumeNode.SetAndObserveTransformNodeID(transformNode.GetID())
        untransformed = slicer.util.addVolumeFromArray(slicer.util.arrayFromVolume(volumeNode).copy(), name="copy")
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        untransformed.SetIJKToRASMatrix(ijkToRas)

        bundle = load_bundle(None)
        logic = LiverCTSegmentationLogic()
        # fast=True keeps the self-test short; both runs use the same settings.
        segNode, _stats = logic.process(volumeNode, model=bundle, device="cpu", fast=True)
        referenceSeg, _stats = logic.process(untransformed, model=bundle, device="cpu", fast=True)
        self.assertEqual(segNode.GetTransformNodeID(), transformNode.GetID())
        self.assertGeometryMatchesVolume(segNode, volumeNode)
        # Same voxels as for the untransformed copy: the transform moves the result, it does not resample it.
        for lab in bundle.labels:
            sid = segNode.GetSegmentation().GetSegmentIdBySegmentName(lab["name"])
            rid = referenceSeg.GetSegmentation().GetSegmentIdBySegmentName(lab["name"])
            got = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, sid, volumeNode)
            want = slicer.util.arrayFromSegmentBinaryLabelmap(referenceSeg, rid, untransformed)
            np.testing.assert_array_equal(got > 0, want > 0)
        self.delayDisplay("Test passed")
