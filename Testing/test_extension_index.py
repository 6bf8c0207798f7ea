"""The Extension Manager side: the Extensions Index entry validates against Slicer's schema and
agrees with CMakeLists.txt, and Resources/requirements.txt lists exactly what the module's code
imports beyond the standard library, Slicer (and what Slicer ships) and torch."""
from __future__ import annotations

import ast
import json
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "Resources" / "ExtensionsIndex" / "LiverCTSegmentation.json"
SCHEMA = ROOT / "Testing" / "data" / "slicer-extension-catalog-entry-schema-v1.0.1.json"
MODULE = ROOT / "LiverCTSegmentation"
REQUIREMENTS = MODULE / "Resources" / "requirements.txt"
# What runs inside Slicer: the module file and its Lib, less the browser app, the synthetic data
# (phantoms; they move to synthetic/) and the `liverseg` command line, which Slicer never starts.
NOT_IN_SLICER = ("web", "synthetic")
NOT_IN_SLICER_FILES = ("cli.py", "phantom.py", "phantom_anatomy.py", "phantom_shapes.py")
# Provided by Slicer itself, its modules (SampleData) or its PyTorch extension (PyTorchUtils), never
# installed by the module; Slicer's Python ships packaging with pip.
PROVIDED = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "mrml", "PythonQt", "torch", "numpy", "SimpleITK",
            "requests", "pydicom", "packaging", "SampleData", "PyTorchUtils", "LiverCTSegmentationLib",
            "LiverCTSegmentation"}


def _cmake(var: str) -> str:
    m = re.search(rf'set\({var}\s+"([^"]*)"', (ROOT / "CMakeLists.txt").read_text())
    assert m, var
    return m.group(1)


def test_index_entry_validates_against_the_slicer_schema():
    jsonschema = pytest.importorskip("jsonschema")
    entry = json.loads(ENTRY.read_text())
    schema = json.loads(SCHEMA.read_text())
    assert entry["$schema"] == schema["$id"]  # the copy is the version the entry names
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(entry, schema)
    bad = dict(entry, tier=2)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_index_entry_agrees_with_the_extension_cmakelists():
    entry = json.loads(ENTRY.read_text())
    assert entry["category"] == _cmake("EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == _cmake("EXTENSION_DEPENDS").split()
    assert _cmake("EXTENSION_HOMEPAGE").startswith(entry["scm_url"])
    assert "PyTorch" in entry["build_dependencies"]


def _imported_top_level() -> dict[str, list[str]]:
    """Top-level module -> files importing it, over the code that runs inside Slicer."""
    found: dict[str, list[str]] = {}
    files = [MODULE / "LiverCTSegmentation.py"] + sorted((MODULE / "LiverCTSegmentationLib").rglob("*.py"))
    for f in files:
        rel = f.relative_to(MODULE / "LiverCTSegmentationLib").parts if "LiverCTSegmentationLib" in f.parts else ()
        if (rel and rel[0] in NOT_IN_SLICER) or f.name in NOT_IN_SLICER_FILES:
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                found.setdefault(n.split(".")[0], []).append(f.name)
    return found


def _requirement_names() -> dict[str, str]:
    """Distribution name (lower case) -> requirement line, optional ones included."""
    out = {}
    for raw in REQUIREMENTS.read_text().splitlines():
        line = raw.partition("#")[0].strip()
        if line:
            out[re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower()] = line
    return out


def test_requirements_list_exactly_what_the_module_imports():
    dists = metadata.packages_distributions()
    needed: dict[str, list[str]] = {}
    for module, where in _imported_top_level().items():
        if module in sys.stdlib_module_names or module in PROVIDED or module == "__future__":
            continue
        names = [d.lower() for d in dists.get(module, [module])]
        needed[names[0]] = where
    listed = _requirement_names()
    missing = {n: w[:3] for n, w in needed.items() if n not in listed}
    assert not missing, f"imported in the module but not in Resources/requirements.txt: {missing}"
    stale = sorted(set(listed) - set(needed) - {"torch"})
    assert not stale, f"listed in Resources/requirements.txt but imported nowhere in the module: {stale}"
    unbounded = [line for line in listed.values() if ">=" not in line]
    assert not unbounded, f"requirements without a lower bound: {unbounded}"
