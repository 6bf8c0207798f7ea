"""The plan of the house, enforced: which package may import which (docs/ARCHITECTURE.md).

Every module of the Slicer module folder (``LiverCTSegmentation.py`` + ``LiverCTSegmentationLib``)
and of ``training/`` (``liverct_training``) is parsed with ``ast``; every import, at module level
or inside a function, is an arrow from that module to the module it names. The arrows must follow
the layers below, and the module graph must have no cycles (a cycle means a helper lives in the
wrong room: move it down to where both sides can import it).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package prefix its files are imported under (pyproject.toml's package-dir).
SOURCE_ROOTS = {ROOT / "LiverCTSegmentation": "", ROOT / "training": "liverct_training"}
LIB = "LiverCTSegmentationLib"

# Layer of a module: the first prefix that matches (a prefix matches itself and its submodules).
LAYER_PREFIXES = [
    ("LiverCTSegmentation", "slicer_module"),         # the thin module file Slicer loads (+ self-test)
    (f"{LIB}.engine", "engine"),                      # Slicer-free core: what runs on a user's CT
    (f"{LIB}.synthetic", "synthetic"),                # phantoms with exact ground truth
    (f"{LIB}.batch", "batch"),                        # face: liverseg CLI and the folder batch runner
    (f"{LIB}.slicerui", "slicerui"),                  # face: the Slicer panel, logic, worker
    (f"{LIB}.web", "web"),                            # face: the browser app
    ("liverct_training", "training"),                 # face: liverseg-train
    (f"{LIB}.models", "registry"),                    # model registry, used by every face
    (f"{LIB}.resource_paths", "registry"),            # where the bundled models and sample are
]
ROOT_PACKAGE = LIB  # its __init__ holds __version__ and imports nothing: every layer may read it
FACES = {"batch", "slicerui", "web", "training"}

# Which layers a layer may import (its own always). Nothing lists "training": the library never
# imports liverct_training; only the Slicer self-test and training use synthetic data.
ALLOWED_LAYERS = {
    "engine": set(),
    "synthetic": {"engine"},
    "registry": {"engine"},
    "batch": {"engine", "registry"},
    "slicerui": {"engine", "registry"},
    "web": {"engine", "registry"},
    "training": {"engine", "registry", "synthetic"},
    "slicer_module": {"slicerui", "engine", "registry", "synthetic"},
}
# The only arrows from one face into another, each to one named module, and why.
FACE_ARROWS = {
    ("slicerui", f"{LIB}.batch"):
        "LiverCTSegmentationLogic.processFiles runs the batch runner through the batch package's public names",
    ("web", f"{LIB}.slicerui.mrml_convert"):
        "the browser app holds an MRML scene too and shares the Volume <-> MRML node bridge",
    ("training", f"{LIB}.batch.overlay"):
        "evaluation draws the same overlay PNG as liverseg",
}


def _module_files() -> dict[str, Path]:
    mods = {}
    for base, prefix in SOURCE_ROOTS.items():
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if "__pycache__" in parts or parts[0] == "Testing":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(([prefix] if prefix else []) + parts)] = path
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Known modules that ``name`` imports anywhere in its file (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                # "import a.b.c" names a.b.c; an external module names nothing of ours.
                parts = alias.name.split(".")
                for n in range(len(parts), 0, -1):
                    if ".".join(parts[:n]) in known:
                        found.add(".".join(parts[:n]))
                        break
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # "from pkg import sub" imports the submodule; "from mod import name" the module.
                if f"{source}.{alias.name}" in known:
                    found.add(f"{source}.{alias.name}")
                elif source in known:
                    found.add(source)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _module_files()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def layer_of(module: str) -> str | None:
    if module == ROOT_PACKAGE:
        return "root"
    for prefix, layer in LAYER_PREFIXES:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_graph_sees_module_and_function_level_imports(graph):
    """The parser finds real arrows (a broken parser would let every rule pass on an empty graph)."""
    assert f"{LIB}.engine.pipeline" in graph and "liverct_training.train" in graph
    assert f"{LIB}.engine.errors" in graph[f"{LIB}.engine.pipeline"]
    assert f"{LIB}.engine.inference" in graph["liverct_training.train"]  # imported inside a function
    assert f"{LIB}.slicerui.logic" in graph["LiverCTSegmentation"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_belongs_to_a_layer(graph):
    """A module outside the known packages has no rule: give it a home (and a row in the doc)."""
    homeless = sorted(m for m in graph if layer_of(m) is None)
    assert not homeless, f"modules in no layer: {homeless}"


def test_library_top_level_holds_only_the_registry(graph):
    """Beside the packages, LiverCTSegmentationLib keeps only __init__, models and resource_paths."""
    top = sorted(m for m in graph if m.count(".") == 1 and m.startswith(LIB + ".") and not _is_package(m))
    assert top == [f"{LIB}.models", f"{LIB}.resource_paths"], f"top-level modules: {top}"


def _is_package(module: str) -> bool:
    return _module_files()[module].name == "__init__.py"


def _forbidden(graph: dict[str, set[str]], layers: set[str]) -> list[str]:
    bad = []
    for module in sorted(graph):
        src = layer_of(module)
        if src not in layers:
            continue
        for target in sorted(graph[module]):
            dst = layer_of(target)
            if dst in (src, "root") or dst in ALLOWED_LAYERS.get(src, set()) or (src, target) in FACE_ARROWS:
                continue
            bad.append(f"{module} ({src}) -> {target} ({dst})")
    return bad


def test_engine_imports_no_face_no_synthetic_no_training(graph):
    bad = _forbidden(graph, {"engine"})
    assert not bad, "the engine imports only itself (numpy/torch/SimpleITK around it):\n" + "\n".join(bad)


def test_no_face_imports_another_face_except_the_documented_arrows(graph):
    bad = _forbidden(graph, FACES | {"slicer_module"})
    assert not bad, "arrows not in ALLOWED_LAYERS / FACE_ARROWS:\n" + "\n".join(bad)


def test_registry_and_synthetic_import_no_face(graph):
    bad = _forbidden(graph, {"registry", "synthetic"})
    assert not bad, "\n".join(bad)


def test_root_package_imports_nothing_of_ours(graph):
    """Everything may import the package root (``__version__``), so it must not import back."""
    assert graph[ROOT_PACKAGE] == set(), sorted(graph[ROOT_PACKAGE])


def test_library_never_imports_training(graph):
    bad = sorted(f"{m} -> {t}" for m, targets in graph.items() if m.startswith(LIB)
                 for t in targets if t.startswith("liverct_training"))
    assert not bad, "LiverCTSegmentationLib must run without training/: " + ", ".join(bad)


def test_face_arrows_still_exist(graph):
    """A documented exception that no module uses any more is removed from the list (and the doc)."""
    unused = [f"{src} -> {target}" for (src, target) in FACE_ARROWS
              if not any(layer_of(m) == src and target in ts for m, ts in graph.items())]
    assert not unused, f"FACE_ARROWS no longer used: {unused}"


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles (move the shared helper down to where both sides can import it):\n" + \
        "\n".join(" <-> ".join(c) for c in found)
