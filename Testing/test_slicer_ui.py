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
