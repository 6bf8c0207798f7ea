"""Glue and small fakes to run the Slicer module's code on ``slicer-core`` without the app.

``slicer-core`` (pip) gives the REAL MRML scene, nodes, storage nodes and module
logics (segmentations, volumes, colors, subject hierarchy, tables) plus
``slicer.util``. It lacks the application layer. This file provides:

Real glue (no fakes):
- ``setup_core_scene()``: a fresh ``vtkMRMLScene`` as ``slicer.mrmlScene`` with
  the real ``vtkSlicerSegmentationsModuleLogic``, ``vtkSlicerVolumesLogic``,
  ``vtkMRMLColorLogic`` (default colour tables), ``vtkSlicerSubjectHierarchyModuleLogic``
  attached, and
  ``slicer.modules.<name>.logic()`` returning them, which is what
  ``slicer.util.arrayFromSegmentBinaryLabelmap`` & co. call.

Fakes (for what has no stand-in in slicer-core; each documented below):
- ``slicer.app``: ``FakeApp`` (testingEnabled, connect, no GUI).
- ``slicer.ScriptedLoadableModule``: minimal base classes with the attributes
  the module file and logic use (``parent.title`` etc., ``getParameterNode``,
  ``resourcePath``, a ``unittest.TestCase`` test base).
- ``slicer.i18n``: ``tr``/``translate`` returning the text unchanged.
- ``qt`` / ``ctk``: ``AnyModule`` placeholders so that importing the module
  file does not fail; they are never used to build widgets here (the .ui is
  tested with PySide6 instead).
- ``pyside_qt()``: a ``qt`` stand-in for the background runner only: the REAL
  ``QProcess``/``QTimer`` of PySide6, with the two PythonQt spellings the runner
  uses (``QProcess.NotRunning``/``SeparateChannels`` and ``timer.connect("timeout()", slot)``).
  Tests put it in ``sys.modules["qt"]`` and pump ``app.processEvents()``.
- ``write_launcher()`` / ``write_script()``: small Python scripts standing in for
  ``PythonSlicer`` (a launcher that runs the real interpreter as a CHILD process,
  like Slicer's) and for workers that hang or crash.
"""
from __future__ import annotations

import os
import sys
import textwrap
import types
import unittest
from pathlib import Path


# ------------------------------------------------------------------ real glue
def setup_core_scene():
    """Create a fresh real MRML scene + module logics and register them on ``slicer``."""
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLScene(scene)
    # Real SH logic. Note: items for newly added nodes are created by the app's
    # Qt plugin logic, which slicer-core lacks; tests create items explicitly.
    subjectHierarchy = slicer.vtkSlicerSubjectHierarchyModuleLogic()
    subjectHierarchy.SetMRMLScene(scene)
    modules = getattr(slicer, "modules", None)
    if not isinstance(modules, types.SimpleNamespace):
        modules = types.SimpleNamespace()
        slicer.modules = modules
    modules.segmentations = types.SimpleNamespace(logic=lambda: segmentations)
    modules.volumes = types.SimpleNamespace(logic=lambda: volumes)
    modules.colors = types.SimpleNamespace(logic=lambda: colors)
    modules.subjecthierarchy = types.SimpleNamespace(logic=lambda: subjectHierarchy)
    # Keep the logics alive as long as the scene is used.
    scene._liverct_logics = (colors, segmentations, volumes, subjectHierarchy)  # type: ignore[attr-defined]
    return scene


# ---------------------------------------------------------------------- fakes
class FakeApp:
    """Stand-in for ``slicer.app`` (qSlicerApplication): no GUI, testing mode on."""

    def testingEnabled(self) -> bool:  # noqa: N802
        return True

    def connect(self, *args, **kwargs) -> None:
        """Signal connections (e.g. startupCompleted) are recorded and never fire."""
        self.connections = getattr(self, "connections", []) + [args]

    def processEvents(self) -> None:  # noqa: N802
        pass


class _Parent:
    """What ``ScriptedLoadableModule.__init__`` receives: a bag of module metadata."""

    def __init__(self) -> None:
        self.title = ""
        self.categories: list = []
        self.dependencies: list = []
        self.contributors: list = []
        self.helpText = ""
        self.acknowledgementText = ""


class ScriptedLoadableModule:
    """Fake of Slicer's base: stores ``parent`` and the module folder (for resourcePath)."""

    def __init__(self, parent=None) -> None:
        self.parent = parent if parent is not None else _Parent()
        self.moduleName = self.__class__.__name__
        mod = sys.modules.get(self.__class__.__module__)
        self._dir = os.path.dirname(getattr(mod, "__file__", "") or ".")

    def resourcePath(self, filename: str) -> str:  # noqa: N802
        return os.path.join(self._dir, "Resources", filename)


class ScriptedLoadableModuleLogic:
    """Fake of Slicer's logic base: ``getParameterNode`` returns a real scripted-module node."""

    def __init__(self, parent=None) -> None:
        self.moduleName = self.__class__.__name__.replace("Logic", "")

    def getParameterNode(self):  # noqa: N802
        import slicer

        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetName(self.moduleName)
            slicer.mrmlScene.AddNode(node)
        return node


class ScriptedLoadableModuleWidget:
    """Fake widget base (never instantiated in CI: the GUI needs the real app)."""

    def __init__(self, parent=None) -> None:
        self.parent = parent


class ScriptedLoadableModuleTest(unittest.TestCase):
    """Same as Slicer's: a ``unittest.TestCase`` with ``delayDisplay``."""

    def delayDisplay(self, message, msec=1000):  # noqa: N802
        print(message)


class AnyModule(types.ModuleType):
    """Placeholder module (``qt``, ``ctk``): any attribute is a do-nothing class."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(name, (), {"__init__": lambda self, *a, **k: None})
        setattr(self, name, cls)
        return cls


def install_fakes() -> None:
    """Register the fakes above (idempotent). Call before importing module code."""
    import slicer

    if not hasattr(slicer, "app"):
        slicer.app = FakeApp()
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule = ScriptedLoadableModule
    slm.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    slm.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    slm.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    slm.__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleWidget",
                   "ScriptedLoadableModuleTest"]
    sys.modules.setdefault("slicer.ScriptedLoadableModule", slm)
    slicer.ScriptedLoadableModule = sys.modules["slicer.ScriptedLoadableModule"]
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    sys.modules.setdefault("slicer.i18n", i18n)
    slicer.i18n = sys.modules["slicer.i18n"]
    for name in ("qt", "ctk"):
        sys.modules.setdefault(name, AnyModule(name))


# ------------------------------------------------------------ runner stand-ins
def pyside_qt():
    """``(qt module stand-in, QApplication)`` built on PySide6 (see the module docstring)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtCore, QtWidgets

    # A QApplication (not just QCoreApplication) so widget tests in the same process still work.
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])

    class QProcess(QtCore.QProcess):
        NotRunning = QtCore.QProcess.ProcessState.NotRunning
        SeparateChannels = QtCore.QProcess.ProcessChannelMode.SeparateChannels

    class QTimer(QtCore.QTimer):
        def connect(self, signal: str, slot) -> None:  # PythonQt style: obj.connect("signal()", slot)
            getattr(self, signal.split("(", 1)[0]).connect(slot)

    qt = types.ModuleType("qt")
    qt.QProcess, qt.QTimer = QProcess, QTimer
    return qt, app


LAUNCHER_EVENT = "launcher_child"


def write_launcher(folder, target_script) -> str:
    """A ``PythonSlicer``-like launcher: runs ``target_script`` (same args) as a child and waits.

    It reports the child's PID on stdout as ``LIVERCT {"event": "launcher_child", "pid": N}``
    so tests can check that Cancel killed the child too, not only the launcher.
    """
    return write_script(folder, "launcher.py", f"""
        import json, subprocess, sys
        child = subprocess.Popen([sys.executable, {str(target_script)!r}] + sys.argv[1:])
        print("LIVERCT " + json.dumps({{"event": {LAUNCHER_EVENT!r}, "pid": child.pid}}), flush=True)
        sys.exit(child.wait())
        """)


def write_script(folder, name: str, body: str) -> str:
    """Write a Python script (dedented ``body``) into ``folder`` and return its path."""
    path = Path(folder) / name
    path.write_text(textwrap.dedent(body).lstrip(), encoding="utf-8")
    return str(path)


HANGING_WORKER = """
    import json, time
    print("LIVERCT " + json.dumps({"event": "progress", "fraction": 0.1, "stage": "coarse"}), flush=True)
    time.sleep(600)
    """

CRASHING_WORKER = """
    import json, os, sys
    print("LIVERCT " + json.dumps({"event": "progress", "fraction": 0.2, "stage": "coarse"}), flush=True)
    sys.stderr.write("Fatal Python error: Segmentation fault\\n\\nCurrent thread (most recent call first):\\n")
    sys.stderr.flush()
    os._exit(134)
    """


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting for a non-reaping init counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
