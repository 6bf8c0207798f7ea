"""The Slicer build installs only what the CMake lists name: check nothing is missing.

A .py file under LiverCTSegmentation/ (module file + Lib package) that is not in
MODULE_PYTHON_SCRIPTS, or a file under LiverCTSegmentation/Resources/ that is not
in MODULE_PYTHON_RESOURCES, would be silently absent from the installed
extension. Entries naming files that do not exist break the build.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LiverCTSegmentation"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
EXTENSION_CMAKE = ROOT / "CMakeLists.txt"
IGNORED_PARTS = {"__pycache__", ".pytest_cache"}


def cmake_set(text: str, variable: str) -> list[str]:
    """Entries of ``set(VARIABLE ...)`` with ``${MODULE_NAME}`` expanded and comments removed."""
    text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    m = re.search(r"set\(\s*" + re.escape(variable) + r"\s+(.*?)\)", text, re.S)
    assert m, f"{MODULE_CMAKE.relative_to(ROOT)} has no set({variable} ...)"
    module_name = re.search(r"set\(\s*MODULE_NAME\s+(\S+)\s*\)", text).group(1)
    return [e.replace("${MODULE_NAME}", module_name) for e in m.group(1).split()]


def _files(folder: Path, pattern: str) -> set[str]:
    return {p.relative_to(MODULE_DIR).as_posix() for p in folder.rglob(pattern)
            if p.is_file() and not IGNORED_PARTS & set(p.parts) and not p.name.endswith((".pyc", ".pyo"))
            and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def module_cmake() -> str:
    return MODULE_CMAKE.read_text(encoding="utf-8")


def test_every_python_file_is_listed(module_cmake):
    listed = set(cmake_set(module_cmake, "MODULE_PYTHON_SCRIPTS"))
    on_disk = {p for p in _files(MODULE_DIR, "*.py") if not p.startswith("Testing/")}
    missing = sorted(on_disk - listed)
    assert not missing, ("Python files missing from MODULE_PYTHON_SCRIPTS in LiverCTSegmentation/CMakeLists.txt "
                         "(they would not be installed): " + ", ".join(missing))
    stale = sorted(p for p in listed if not (MODULE_DIR / p).is_file())
    assert not stale, "MODULE_PYTHON_SCRIPTS lists files that do not exist: " + ", ".join(stale)


def test_every_resource_is_listed(module_cmake):
    listed = set(cmake_set(module_cmake, "MODULE_PYTHON_RESOURCES"))
    on_disk = _files(MODULE_DIR / "Resources", "*")
    missing = sorted(on_disk - listed)
    assert not missing, ("Resource files missing from MODULE_PYTHON_RESOURCES in LiverCTSegmentation/CMakeLists.txt "
                         "(they would not be installed): " + ", ".join(missing))
    stale = sorted(p for p in listed if not (MODULE_DIR / p).is_file())
    assert not stale, "MODULE_PYTHON_RESOURCES lists files that do not exist: " + ", ".join(stale)
    for needed in ("Resources/Icons/LiverCTSegmentation.png", "Resources/UI/LiverCTSegmentation.ui",
                   "Resources/requirements.txt"):
        assert needed in listed, f"{needed} must be listed in MODULE_PYTHON_RESOURCES"


def test_module_is_built_as_scripted_module_with_tests(module_cmake):
    assert re.search(r"slicerMacroBuildScriptedModule\(.*WITH_GENERIC_TESTS", module_cmake, re.S)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module_cmake
    assert (MODULE_DIR / "Testing" / "CMakeLists.txt").is_file()
    assert (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").is_file()


def test_extension_metadata():
    text = EXTENSION_CMAKE.read_text(encoding="utf-8")
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(r"set\(\s*" + var + r"\s+\S", text), f"{var} is not set in CMakeLists.txt"
    assert re.search(r"set\(\s*EXTENSION_DEPENDS\s+\"?PyTorch", text)
    assert "add_subdirectory(LiverCTSegmentation)" in text
    assert "find_package(Slicer REQUIRED)" in text
    assert (ROOT / "LiverCTSegmentation.png").is_file(), "extension icon LiverCTSegmentation.png is missing at the repo root"


RAW_BASE = "https://raw.githubusercontent.com/liverct/SlicerLiverCTSegmentation/main/"


def extension_string(text: str, variable: str) -> str:
    m = re.search(r"set\(\s*" + re.escape(variable) + r'\s+"([^"]*)"', text)
    assert m, f"{variable} is not set to a quoted string in CMakeLists.txt"
    return m.group(1)


def test_extension_urls_point_at_files_in_the_repo():
    """Icon and screenshot URLs on the repository's raw base must name files that exist here."""
    text = EXTENSION_CMAKE.read_text(encoding="utf-8")
    homepage = extension_string(text, "EXTENSION_HOMEPAGE")
    repo = RAW_BASE.split("githubusercontent.com/", 1)[1].rsplit("/main/", 1)[0]
    assert f"github.com/{repo}" in homepage, (homepage, repo)
    icon = extension_string(text, "EXTENSION_ICONURL").split()
    shots = extension_string(text, "EXTENSION_SCREENSHOTURLS").split()  # space-separated list
    assert len(icon) == 1 and shots
    for url in icon + shots:
        assert url.startswith(RAW_BASE), f"{url} is not on {RAW_BASE}"
        rel = url[len(RAW_BASE):]
        assert (ROOT / rel).is_file(), f"{url} points at {rel}, which is not in the repository"
    assert all(u.lower().endswith((".png", ".jpg", ".jpeg", ".gif")) for u in shots)


def test_extension_description_matches_default_model():
    """The description names the real default model and its limits, not the old phantom demo."""
    import json

    text = EXTENSION_CMAKE.read_text(encoding="utf-8")
    description = extension_string(text, "EXTENSION_DESCRIPTION")
    default = json.loads((MODULE_DIR / "Resources" / "Models" / "manifest.json").read_text(encoding="utf-8"))["default"]
    assert default in description, f"EXTENSION_DESCRIPTION does not name the default model {default!r}"
    assert "phantom" not in description.lower()
    assert "research use only" in description.lower()


def test_icon_is_128px_png():
    for p in (ROOT / "LiverCTSegmentation.png", MODULE_DIR / "Resources" / "Icons" / "LiverCTSegmentation.png"):
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{p} is not a PNG"
        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (w, h) == (128, 128), f"{p} is {w}x{h}, expected 128x128"


def test_requirements_do_not_reinstall_slicer_packages():
    from LiverCTSegmentationLib.slicerui.install import SLICER_SHIPPED, _name, read_requirements

    reqs = read_requirements(MODULE_DIR / "Resources" / "requirements.txt")
    assert reqs and "torch>=2.1" in reqs
    assert not [r for r in reqs if _name(r) in SLICER_SHIPPED]
    everything = read_requirements(MODULE_DIR / "Resources" / "requirements.txt", optional=True)
    assert not [r for r in everything if _name(r) in SLICER_SHIPPED]
    # matplotlib is only for batch overlay pictures: listed, but never installed automatically.
    assert "matplotlib" in {_name(r) for r in everything} - {_name(r) for r in reqs}
