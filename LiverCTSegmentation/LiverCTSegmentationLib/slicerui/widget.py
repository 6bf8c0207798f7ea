"""The module panel. GUI only: all work goes through the logic and the background runner."""
from __future__ import annotations

import os

import qt
import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from .logic import LiverCTSegmentationLogic
from .modelchoice import LOAD_FROM_DISK, list_model_choices
from .stages import STAGE_NAMES, stage_text  # noqa: F401 - STAGE_NAMES kept importable from here


class LiverCTSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self._demoKeys: set = set()
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverCTSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        for w in (self.ui.inputVolumeSelector, self.ui.outputSegmentationSelector, self.ui.roiSelector,
                  self.ui.resultsTableView):
            w.setMRMLScene(slicer.mrmlScene)

        self.logic = LiverCTSegmentationLogic()
        self.populateModels()
        self.ui.demoWarningLabel.setStyleSheet("color: #b06000")

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.show3DButton.connect("clicked(bool)", self.onShow3D)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)

        self.initializeParameterNode()

    def populateModels(self, select: str = "") -> None:
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        self._demoKeys = set()
        for choice in list_model_choices():
            if choice.demo:
                self._demoKeys.add(choice.key)
            combo.addItem(choice.label, choice.key)
            combo.setItemData(combo.count - 1, choice.tooltip, qt.Qt.ToolTipRole)
        if select:
            idx = combo.findData(select)
            if idx < 0:
                combo.insertItem(combo.count - 1, os.path.basename(select.rstrip("/\\")) or select, select)
                idx = combo.findData(select)
            combo.setCurrentIndex(idx)
        combo.blockSignals(False)
        self.ui.demoWarningLabel.visible = combo.currentData in self._demoKeys

    def cleanup(self) -> None:
        if self._run is not None and self._run.running:
            self._run.cancel()
        from .worker_host import stop_all

        stop_all()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk_modified(), self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None and self._run.running:
            self._run.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # --------------------------------------------------------- parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk_modified(), self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk_modified(), self._checkCanApply)
            if self._parameterNode.model:
                self.populateModels(select=self._parameterNode.model)
            if self._parameterNode.resultsTable:
                self.ui.resultsTableView.setMRMLTableNode(self._parameterNode.resultsTable)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        running = self._run is not None and self._run.running
        if running:
            self.ui.applyButton.enabled = True
            return
        ok = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.applyButton.enabled = ok
        self.ui.applyButton.toolTip = _("Segment the liver and liver tumors.") if ok else _("Select an input CT volume.")
        self.ui.show3DButton.enabled = bool(self._parameterNode and self._parameterNode.outputSegmentation)

    def onModelChanged(self, index: int) -> None:
        key = self.ui.modelComboBox.itemData(index)
        if key == LOAD_FROM_DISK:
            key = self.selectModelFromDisk()
            if key is None:
                self.populateModels(select=self._parameterNode.model if self._parameterNode else "")
                return
            self.populateModels(select=key)
        self.ui.demoWarningLabel.visible = key in getattr(self, "_demoKeys", set())
        if self._parameterNode:
            self._parameterNode.model = key or ""

    def selectModelFromDisk(self):
        """Ask for a bundle's model.json or a zipped bundle; the model key, or None if cancelled/invalid."""
        from ..engine.errors import BundleError
        from .modelchoice import selected_bundle_key

        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Select a model bundle: its model.json or a .zip archive"), "",
            _("Model bundle (model.json *.zip);;All files (*)"))
        if not path:
            return None
        try:
            return selected_bundle_key(path)
        except BundleError as e:
            slicer.util.errorDisplay(str(e), windowTitle=_("Liver CT Segmentation"))
            return None

    # ------------------------------------------------------------------ actions
    def onInstallDependencies(self) -> None:
        from .install import RestartRequired, ensure_dependencies

        with slicer.util.tryWithErrorDisplay(_("Failed to install the dependencies."), waitCursor=True):
            try:
                if ensure_dependencies(askConfirmation=True):
                    self.ui.statusLabel.text = _("All dependencies are installed.")
                else:
                    self.ui.statusLabel.text = _("Dependencies were not installed.")
            except RestartRequired as e:
                if slicer.util.confirmYesNoDisplay(str(e) + "\n\n" + _("Restart now?")):
                    slicer.util.restart()

    def onApplyButton(self) -> None:
        if self._run is not None and self._run.running:
            self.ui.statusLabel.text = _("Cancelling…")
            self._run.cancel()
            return
        from ..engine.errors import LiverSegError
        from .install import RestartRequired, ensure_dependencies
        from .runner import BackgroundSegmentation

        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            try:
                if not ensure_dependencies(askConfirmation=True):
                    self.ui.statusLabel.text = _("Dependencies are needed to run the segmentation.")
                    return
            except RestartRequired as e:
                if slicer.util.confirmYesNoDisplay(str(e) + "\n\n" + _("Restart now?")):
                    slicer.util.restart()
                return
            p = self._parameterNode
            if not self.downloadModelIfNeeded(p.model):
                return
            # No table passed: each segmentation keeps its own statistics table (see the logic).
            self._run = BackgroundSegmentation(
                self.logic, p.inputVolume, p.outputSegmentation, model=p.model, device=p.device, fast=p.fast,
                roi=p.roi, perLesionSegments=p.perLesionSegments, tableNode=None, uncertainty=p.uncertainty,
                onProgress=self.onProgress, onWarning=self.onWarning, onFinished=self.onFinished,
                keepWorker=True)  # the worker stays loaded between Applies (worker_host.py)
            try:
                self._run.start()
            except LiverSegError as e:
                self._run = None
                raise RuntimeError(str(e)) from None
            self.setRunning(True)

    def downloadModelIfNeeded(self, key: str) -> bool:
        """Ask, then download a manifest model that is not installed (progress dialog). False if declined/cancelled."""
        from ..engine.errors import Cancelled
        from .modelchoice import download_with_progress, list_model_choices

        choice = next((c for c in list_model_choices() if c.key == key), None)
        if choice is None or choice.installed:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("The model '{name}' is not installed yet. Download it now?").format(name=choice.label)):
            return False
        dialog = slicer.util.createProgressDialog(
            parent=slicer.util.mainWindow(), value=0, maximum=100, windowTitle=_("Liver CT Segmentation"),
            labelText=_("Downloading model '{name}'…").format(name=choice.label))
        try:
            download_with_progress(key, dialog, slicer.app.processEvents)
        except Cancelled:
            self.ui.statusLabel.text = _("Model download cancelled.")
            return False
        finally:
            dialog.close()
        self.populateModels(select=key)
        return True

    def setRunning(self, running: bool) -> None:
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.toolTip = _("Stop the running segmentation.") if running else _("Segment the liver and liver tumors.")
        for w in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton, self.ui.installDependenciesButton):
            w.enabled = not running
        if running:
            self.ui.progressBar.value = 0
        self._checkCanApply()

    def onProgress(self, fraction: float, stage: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = stage_text(stage)

    def onWarning(self, message: str) -> None:
        slicer.util.showStatusMessage(message, 5000)
        self.ui.statusLabel.toolTip = (self.ui.statusLabel.toolTip + "\n" + message).strip()

    def onFinished(self, segmentationNode, statistics, error) -> None:
        run, self._run = self._run, None
        self.setRunning(False)
        if error:
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = error
            if "cancelled" not in error.lower():
                slicer.util.errorDisplay(error, windowTitle=_("Liver CT Segmentation"))
            return
        p = self._parameterNode
        if p is not None:
            p.outputSegmentation = segmentationNode
            if segmentationNode is not None:  # show this segmentation's own table
                p.resultsTable = self.logic.statisticsTableNode(segmentationNode)
            if p.resultsTable is not None:
                self.ui.resultsTableView.setMRMLTableNode(p.resultsTable)
        n = int((statistics or {}).get("tumor_count") or 0)
        self.ui.statusLabel.text = _("Done: liver {liver:.0f} mL, {n} tumor(s). Edit the segments in Segment Editor.").format(
            liver=float((statistics or {}).get("liver_ml") or 0.0), n=n)
        if (statistics or {}).get("confidence") is not None:
            self.ui.statusLabel.text += " " + _("Confidence {c:.2f}.").format(c=float(statistics["confidence"]))
        # The run's warnings (e.g. "Review before use: ...") stay on the panel, not only in a 5 s status message.
        for w in getattr(run, "warnings", None) or []:
            self.ui.statusLabel.text += "\n" + _("Warning: {message}").format(message=w)
        if segmentationNode is not None and p is not None:
            unsure = getattr(self.logic, "lastUncertaintyNode", None)
            if unsure is not None and p.uncertainty:  # where the model is unsure, over the CT
                slicer.util.setSliceViewerLayers(background=p.inputVolume, foreground=unsure, foregroundOpacity=0.5,
                                                 fit=False)
            else:
                slicer.util.setSliceViewerLayers(background=p.inputVolume, fit=False)
        self._checkCanApply()

    def onShow3D(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the segmentation in 3D."), waitCursor=True):
            seg = self._parameterNode.outputSegmentation if self._parameterNode else None
            if seg is None:
                return
            seg.CreateClosedSurfaceRepresentation()
            if seg.GetDisplayNode() is not None:
                seg.GetDisplayNode().SetVisibility3D(True)
            layoutManager = slicer.app.layoutManager()
            if layoutManager is not None and layoutManager.threeDViewCount > 0:
                layoutManager.threeDWidget(0).threeDView().resetFocalPoint()


def vtk_modified():
    import vtk

    return vtk.vtkCommand.ModifiedEvent
