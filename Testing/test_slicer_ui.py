"""The module panel (.ui) and module file, checked without the Slicer application.

- the .ui parses as XML and loads with PySide6's QUiLoader (offscreen), with
  small stand-ins registered for the ctk*/qMRML* classes it uses;
- every ``self.ui.<name>`` used by widget.py exists in the .ui;
- every ``SlicerParameterName`` in the .ui is a field of the parameter node;
- the module file imports (with Testing/slicer_fakes) and has the metadata.
"""
from __future__ import annotations

import ast
import os
import re
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LiverCTSegmentation"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LiverCTSegmentation.ui"
WIDGET_PY = MODULE_DIR / "LiverCTSegmentationLib" / "slicerui" / "widget.py"
PARAMS_PY = MODULE_DIR / "LiverCTSegmentationLib" / "slicerui" / "parameters.py"


def ui_widgets() -> dict[str, str]:
    tree = ET.parse(UI_FILE)
    return {w.get("name"): w.get("class") for w in tree.iter("widget")}


def used_ui_names() -> set[str]:
    return set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", WIDGET_PY.read_text(encoding="utf-8")))


def parameter_fields() -> set[str]:
    tree = ast.parse(PARAMS_PY.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LiverCTSegmentationParameterNode")
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_ui_is_valid_xml_with_expected_root():
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "LiverCTSegmentation"
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    used_custom = {c for c in ui_widgets().values() if c.startswith(("ctk", "qMRML"))}
    assert used_custom <= custom, f"custom widget classes without <customwidget> entries: {used_custom - custom}"


def test_widget_py_names_exist_in_ui():
    names = ui_widgets()
    missing = sorted(used_ui_names() - set(names))
    assert not missing, f"widget.py uses self.ui.<name> not defined in {UI_FILE.name}: {missing}"


def test_ui_parameter_bindings_match_parameter_node():
    fields = parameter_fields()
    assert {"inputVolume", "outputSegmentation", "model", "device", "fast", "roi", "perLesionSegments"} <= fields
    root = ET.parse(UI_FILE).getroot()
    bound = {}
    for w in root.iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[w.get("name")] = prop.findtext("string")
    assert bound, "no widget is bound to the parameter node"
    unknown = {w: p for w, p in bound.items() if p not in fields}
    assert not unknown, f"SlicerParameterName values that are not parameter node fields: {unknown}"


def test_input_selector_excludes_labelmaps():
    root = ET.parse(UI_FILE).getroot()
    w = next(w for w in root.iter("widget") if w.get("name") == "inputVolumeSelector")
    props = {p.get("name"): p for p in w.findall("property")}
    assert [s.text for s in props["nodeTypes"].iter("string")] == ["vtkMRMLScalarVolumeNode"]
    assert props["showChildNodeTypes"].findtext("bool") == "false"


def test_ui_loads_with_pyside6_quiloader():
    pytest.importorskip("PySide6", reason="PySide6 not installed")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QFile, QIODevice
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QTableView, QWidget

    app = QApplication.instance() or QApplication([])

    # Stand-ins with the right names and base classes; .ui properties they lack
    # (nodeTypes, collapsed, ...) become dynamic properties.
    stand_ins = [type(name, (base,), {}) for name, base in (
        ("qMRMLWidget", QWidget), ("ctkCollapsibleButton", QWidget), ("qMRMLNodeComboBox", QWidget),
        ("qMRMLTableView", QTableView))]
    loader = QUiLoader()
    for cls in stand_ins:
        loader.registerCustomWidget(cls)
    f = QFile(str(UI_FILE))
    assert f.open(QIODevice.ReadOnly)
    try:
        widget = loader.load(f)
    finally:
        f.close()
    assert widget is not None, loader.errorString()
    for name, cls in ui_widgets().items():
        child = widget if name == "LiverCTSegmentation" else widget.findChild(QWidget, name)
        assert child is not None, f"{name} did not load"
        assert type(child).__name__ == cls or child.metaObject().className() == cls, (name, type(child).__name__, cls)
    combo = widget.findChild(QWidget, "inputVolumeSelector")
    assert combo.property("nodeTypes") == ["vtkMRMLScalarVolumeNode"]
    assert widget.findChild(QWidget, "applyButton").isEnabled() is False
    widget.deleteLater()
    app.processEvents()


def test_module_file_metadata_with_fakes():
    pytest.importorskip("slicer")
    import importlib.util
    import sys

    import slicer_fakes

    slicer_fakes.install_fakes()
    spec = importlib.util.spec_from_file_location("LiverCTSegmentation", MODULE_DIR / "LiverCTSegmentation.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["LiverCTSegmentation"] = mod
    spec.loader.exec_module(mod)
    m = mod.LiverCTSegmentation(slicer_fakes._Parent())
    assert m.parent.title == "Liver CT Segmentation"
    assert m.parent.categories == ["Segmentation"]
    help_text = m.parent.helpText.lower()
    # The help states the default model's limits (three training CTs, unreliable tumours) and use.
    assert "three public cts" in help_text and "tumour output is unreliable" in help_text
    assert "research use only" in help_text
    ack = m.parent.acknowledgementText
    for name in ("LiTS", "CHAOS", "TotalSegmentator", "mlf-core"):
        assert name in ack
    assert issubclass(mod.LiverCTSegmentationTest, __import__("unittest").TestCase)
    assert mod.LiverCTSegmentationLogic.__name__ == "LiverCTSegmentationLogic"
    assert m.resourcePath("UI/LiverCTSegmentation.ui") == str(UI_FILE)


def test_requirements_status_reports_missing_packages():
    from LiverCTSegmentationLib.slicerui import install

    status = install.requirements_status(["numpy>=1.0", "safetensors>=0.1", "surely-not-a-package-xyz>=1",
                                          "torch>=999"])
    assert "numpy>=1.0" not in status  # shipped with Slicer: never touched
    assert status["safetensors>=0.1"] == "ok"
    assert status["surely-not-a-package-xyz>=1"] == "missing"
    assert status["torch>=999"].startswith("outdated")


def test_model_choices_end_with_load_from_disk():
    from LiverCTSegmentationLib.slicerui.modelchoice import LOAD_FROM_DISK, list_model_choices

    choices = list_model_choices()
    assert choices[-1].key == LOAD_FROM_DISK
    assert len(choices) >= 2


# --------------------------------------------------------------------------- dependency install flow
@pytest.fixture
def fake_slicer(monkeypatch):
    """slicer-core's ``slicer`` with the app fakes, and dialogs that fail the test unless a test allows them."""
    slicer = pytest.importorskip("slicer")
    import slicer_fakes

    slicer_fakes.install_fakes()

    def unexpected(*args, **kwargs):
        raise AssertionError(f"unexpected dialog: {args}")

    for name in ("confirmOkCancelDisplay", "confirmYesNoDisplay", "errorDisplay", "pip_install"):
        monkeypatch.setattr(slicer.util, name, unexpected, raising=False)
    monkeypatch.setattr(slicer.util, "restart", unexpected, raising=False)
    return slicer


def _fake_missing(monkeypatch, install, before: list, after: list) -> None:
    """``missing_requirements()`` returns ``before`` until something was installed, then ``after``."""
    state = {"installed": False}
    monkeypatch.setattr(install, "missing_requirements", lambda reqs=None: after if state["installed"] else before)
    return state


def test_declined_install_returns_false_without_restart(fake_slicer, monkeypatch):
    from LiverCTSegmentationLib.slicerui import install

    state = _fake_missing(monkeypatch, install, ["safetensors>=0.4"], [])
    calls = []

    def pip_ensure(requirements, requester=None, skip_packages=None, prompt_install=True):
        calls.append([str(r) for r in requirements])
        raise RuntimeError("User declined package installation")  # what Slicer's pip_ensure does

    monkeypatch.setattr(fake_slicer, "pydeps", types.SimpleNamespace(pip_ensure=pip_ensure), raising=False)
    assert install.ensure_dependencies(askConfirmation=True) is False
    assert calls == [["safetensors>=0.4"]] and not state["installed"]


def test_install_that_changed_nothing_returns_false(fake_slicer, monkeypatch):
    """Testing mode: pip_ensure skips silently. No RestartRequired, no restart question."""
    from LiverCTSegmentationLib.slicerui import install

    _fake_missing(monkeypatch, install, ["nibabel>=5.0"], ["nibabel>=5.0"])
    monkeypatch.setattr(fake_slicer, "pydeps", types.SimpleNamespace(pip_ensure=lambda reqs, **kw: None),
                        raising=False)
    assert install.ensure_dependencies() is False


def test_successful_install_returns_true_and_partial_asks_restart(fake_slicer, monkeypatch):
    from LiverCTSegmentationLib.slicerui import install

    seen_kwargs = {}

    def pip_ensure(requirements, **kwargs):  # Slicer 5.11+ passes Requirement objects
        from packaging.requirements import Requirement

        assert all(isinstance(r, Requirement) for r in requirements)
        seen_kwargs.update(kwargs)
        state["installed"] = True

    monkeypatch.setattr(fake_slicer, "pydeps", types.SimpleNamespace(pip_ensure=pip_ensure), raising=False)
    state = _fake_missing(monkeypatch, install, ["nibabel>=5.0", "pynrrd>=1.0"], [])
    assert install.ensure_dependencies() is True
    assert "numpy" in seen_kwargs["skip_packages"] and seen_kwargs["requester"] == "Liver CT Segmentation"

    state = _fake_missing(monkeypatch, install, ["nibabel>=5.0", "pynrrd>=1.0"], ["pynrrd>=1.0"])
    with pytest.raises(install.RestartRequired, match="pynrrd"):
        install.ensure_dependencies()


def test_legacy_install_declined_returns_false(fake_slicer, monkeypatch):
    """Slicer without pip_ensure: our own confirmation; Cancel means False, never pip_install."""
    from LiverCTSegmentationLib.slicerui import install

    monkeypatch.setattr(install, "_pip_ensure", lambda slicer: None)
    _fake_missing(monkeypatch, install, ["nibabel>=5.0"], [])
    monkeypatch.setattr(fake_slicer.util, "confirmOkCancelDisplay", lambda text, *a, **k: False)
    assert install.ensure_dependencies() is False


def test_optional_requirements_are_not_installed(tmp_path):
    from LiverCTSegmentationLib.slicerui.install import read_requirements

    req = tmp_path / "requirements.txt"
    req.write_text("# comment\nnibabel>=5.0\nmatplotlib>=3.5  # optional: overlays\npsutil>=5.9 # needed\n")
    assert read_requirements(req) == ["nibabel>=5.0", "psutil>=5.9"]
    assert read_requirements(req, optional=True) == ["nibabel>=5.0", "matplotlib>=3.5", "psutil>=5.9"]


# --------------------------------------------------------------------------- model loading
def test_load_from_disk_accepts_folder_model_json_and_zip(tmp_path):
    import zipfile

    from LiverCTSegmentationLib.engine.errors import BundleError
    from LiverCTSegmentationLib.slicerui.modelchoice import selected_bundle_key

    bundle = tmp_path / "mybundle"
    bundle.mkdir()
    (bundle / "model.json").write_text("{}")
    assert selected_bundle_key(str(bundle)) == str(bundle)
    assert selected_bundle_key(str(bundle / "model.json")) == str(bundle)
    for name, member in (("root.zip", "model.json"), ("nested.zip", "mybundle/model.json")):
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            zf.writestr(member, "{}")
        assert selected_bundle_key(str(tmp_path / name)) == str(tmp_path / name)
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "no bundle")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.zip").write_text("not a zip")
    for bad in ("other.zip", "empty", "notes.txt", "broken.zip"):
        with pytest.raises(BundleError):
            selected_bundle_key(str(tmp_path / bad))


def test_zip_bundle_loads_through_load_bundle(tmp_path, monkeypatch):
    """What "Load from disk" stores for a zip is accepted by the logic (unpacked once into the models folder)."""
    pytest.importorskip("torch")
    import shutil

    from bundle_fixtures import make_box_bundle

    from LiverCTSegmentationLib import models
    from LiverCTSegmentationLib.slicerui.modelchoice import load_bundle, model_for_worker, selected_bundle_key

    monkeypatch.setenv(models.ENV_MODELS_DIR, str(tmp_path / "models"))
    folder = make_box_bundle(tmp_path / "box")
    archive = shutil.make_archive(str(tmp_path / "box_bundle"), "zip", root_dir=folder)
    key = selected_bundle_key(archive)
    assert load_bundle(key).name == "threshold-box-test"
    unpacked = model_for_worker(key)
    assert (Path(unpacked) / "model.json").is_file() and Path(unpacked).is_relative_to(tmp_path / "models")


class FakeProgressDialog:
    """What slicer.util.createProgressDialog returns, as far as the download uses it."""

    def __init__(self, cancel_at=None):
        self.value, self.values, self.cancel_at, self.closed = 0, [], cancel_at, False

    def __setattr__(self, name, v):
        if name == "value" and hasattr(self, "values"):
            self.values.append(v)
        object.__setattr__(self, name, v)

    @property
    def wasCanceled(self):  # noqa: N802 - Qt property name
        return self.cancel_at is not None and len(self.values) >= self.cancel_at

    def close(self):
        self.closed = True


def _fake_download(monkeypatch, tmp_path):
    """A not-installed manifest model whose download reports 10 steps (and is cancellable)."""
    from LiverCTSegmentationLib import models
    from LiverCTSegmentationLib.slicerui import modelchoice

    monkeypatch.setattr(modelchoice, "list_model_choices", lambda: [
        modelchoice.ModelChoice("big-model", "big-model 1.0 (download)", installed=False),
        modelchoice.ModelChoice(modelchoice.LOAD_FROM_DISK, "Load from disk")])
    done = []

    def download_model(name, progress=None, **kw):
        for i in range(1, 11):
            progress.check()  # models.download_model checks before every chunk
            progress.report(i / 10, "download")
        done.append(name)
        return tmp_path / name

    monkeypatch.setattr(models, "download_model", download_model)
    return done


def test_download_with_progress_updates_dialog_and_processes_events(monkeypatch, tmp_path):
    from LiverCTSegmentationLib.engine.errors import Cancelled
    from LiverCTSegmentationLib.slicerui.modelchoice import download_with_progress

    done = _fake_download(monkeypatch, tmp_path)
    dialog, pumped = FakeProgressDialog(), []
    assert download_with_progress("big-model", dialog, lambda: pumped.append(1)) is True
    assert done == ["big-model"] and dialog.values[-1] == 100 and dialog.values == sorted(dialog.values)
    assert len(pumped) == len(dialog.values) >= 10, "events must be processed on every progress report"

    dialog = FakeProgressDialog(cancel_at=3)
    with pytest.raises(Cancelled):
        download_with_progress("big-model", dialog, lambda: None)
    assert done == ["big-model"] and dialog.values[-1] < 100


# --------------------------------------------------------------------------- widget actions (no app needed)
@pytest.fixture
def widget_module(fake_slicer, monkeypatch):
    from LiverCTSegmentationLib.slicerui import widget

    shown = []

    @__import__("contextlib").contextmanager
    def try_with_error_display(message=None, show=True, waitCursor=False):
        try:
            yield
        except Exception as e:  # the real one shows a dialog, then re-raises
            shown.append((message, e))
            raise

    monkeypatch.setattr(fake_slicer.util, "tryWithErrorDisplay", try_with_error_display)
    monkeypatch.setattr(fake_slicer.util, "mainWindow", lambda: None, raising=False)
    widget.shown_errors = shown
    return widget


def _fake_widget(widget, **attrs):
    self = widget.LiverCTSegmentationWidget.__new__(widget.LiverCTSegmentationWidget)
    self.ui = types.SimpleNamespace(statusLabel=types.SimpleNamespace(text="", toolTip=""))
    self._parameterNode = None
    for k, v in attrs.items():
        setattr(self, k, v)
    return self


def test_show3d_errors_are_displayed(widget_module):
    class BrokenSegmentation:
        def CreateClosedSurfaceRepresentation(self):  # noqa: N802
            raise RuntimeError("surface failed")

    self = _fake_widget(widget_module,
                        _parameterNode=types.SimpleNamespace(outputSegmentation=BrokenSegmentation()))
    with pytest.raises(RuntimeError):
        self.onShow3D()
    assert [(m, str(e)) for m, e in widget_module.shown_errors] == [
        ("Failed to show the segmentation in 3D.", "surface failed")]


def test_install_button_errors_and_declines(widget_module, monkeypatch):
    import subprocess

    from LiverCTSegmentationLib.slicerui import install

    self = _fake_widget(widget_module)
    monkeypatch.setattr(install, "ensure_dependencies", lambda askConfirmation=True: False)
    self.onInstallDependencies()  # declined: a status line, no restart question (dialogs fail the test)
    assert self.ui.statusLabel.text == "Dependencies were not installed."

    def failing(askConfirmation=True):
        raise subprocess.CalledProcessError(1, ["pip", "install"])

    monkeypatch.setattr(install, "ensure_dependencies", failing)
    with pytest.raises(subprocess.CalledProcessError):
        self.onInstallDependencies()
    assert widget_module.shown_errors and widget_module.shown_errors[0][0] == "Failed to install the dependencies."


def test_model_download_shows_progress_dialog(widget_module, fake_slicer, monkeypatch, tmp_path):
    _fake_download(monkeypatch, tmp_path)
    dialogs, pumped, selected = [], [], []

    def create_progress_dialog(parent=None, value=0, maximum=100, labelText="", windowTitle="", **kw):
        dialogs.append(FakeProgressDialog())
        return dialogs[-1]

    monkeypatch.setattr(fake_slicer.util, "createProgressDialog", create_progress_dialog)
    monkeypatch.setattr(fake_slicer.util, "confirmOkCancelDisplay", lambda *a, **k: True)
    monkeypatch.setattr(fake_slicer.app, "processEvents", lambda: pumped.append(1))
    self = _fake_widget(widget_module, populateModels=lambda select="": selected.append(select))
    assert self.downloadModelIfNeeded("big-model") is True
    assert len(dialogs) == 1 and dialogs[0].closed and dialogs[0].values[-1] == 100
    assert len(pumped) >= 10 and selected == ["big-model"]


def test_load_from_disk_takes_a_zip(widget_module, monkeypatch, tmp_path):
    import zipfile

    from LiverCTSegmentationLib.slicerui.modelchoice import LOAD_FROM_DISK

    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("bundle/model.json", "{}")
    asked = []

    def get_open_file_name(parent, caption, folder, filters):
        asked.append(filters)
        return str(archive)

    monkeypatch.setattr(widget_module.qt, "QFileDialog", types.SimpleNamespace(getOpenFileName=get_open_file_name),
                        raising=False)
    selected = []
    self = _fake_widget(widget_module, _parameterNode=types.SimpleNamespace(model=""),
                        populateModels=lambda select="": selected.append(select))
    self.ui.modelComboBox = types.SimpleNamespace(itemData=lambda index: LOAD_FROM_DISK)
    self.ui.demoWarningLabel = types.SimpleNamespace(visible=True)
    self.onModelChanged(3)
    assert "*.zip" in asked[0] and "model.json" in asked[0]
    assert self._parameterNode.model == str(archive) and selected == [str(archive)]
    assert self.ui.demoWarningLabel.visible is False


def test_finished_run_shows_that_segmentations_own_table(widget_module, fake_slicer, monkeypatch):
    """Results of a second volume go to a second table; the panel shows the table of the segmentation just made."""
    import slicer_fakes

    from LiverCTSegmentationLib.slicerui.logic import TABLE_REFERENCE_ROLE, LiverCTSegmentationLogic

    scene = slicer_fakes.setup_core_scene()
    try:
        shown_tables = []
        monkeypatch.setattr(fake_slicer.util, "setSliceViewerLayers", lambda **kw: None, raising=False)
        params = types.SimpleNamespace(outputSegmentation=None, resultsTable=None, inputVolume=None)
        self = _fake_widget(widget_module, _parameterNode=params, logic=LiverCTSegmentationLogic(), _run=None,
                            setRunning=lambda running: None, _checkCanApply=lambda: None)
        self.ui.progressBar = types.SimpleNamespace(value=0)
        self.ui.resultsTableView = types.SimpleNamespace(setMRMLTableNode=shown_tables.append)
        tables = []
        for name in ("first", "second"):
            seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            self.logic.statisticsTableNode(seg)  # what importResult does when no table is passed
            self.onFinished(seg, {"liver_ml": 1500.0, "tumor_count": 1}, None)
            assert params.resultsTable is seg.GetNodeReference(TABLE_REFERENCE_ROLE)
            assert shown_tables[-1] is params.resultsTable
            tables.append(params.resultsTable)
        assert tables[0] is not tables[1]
        assert "1500 mL" in self.ui.statusLabel.text
    finally:
        scene.Clear(True)


def test_finished_run_keeps_its_warnings_on_the_panel(widget_module, fake_slicer, monkeypatch):
    monkeypatch.setattr(fake_slicer.util, "setSliceViewerLayers", lambda **kw: None, raising=False)
    warning = "Review before use: liver volume 17.5 L is outside the plausible 0.6-4.5 L; ..."
    self = _fake_widget(widget_module, _parameterNode=None, _run=types.SimpleNamespace(warnings=[warning]),
                        setRunning=lambda running: None, _checkCanApply=lambda: None)
    self.onFinished(None, {"liver_ml": 17500.0, "tumor_count": 6}, None)
    assert "17500 mL" in self.ui.statusLabel.text and warning in self.ui.statusLabel.text
    assert self._run is None
