"""Install the module's Python dependencies inside Slicer, with the user's consent.

- torch: through the PyTorch extension (``PyTorchUtils``), which asks first
  and picks the CUDA build matching the driver.
- the rest (``Resources/requirements.txt``): ``pip_ensure`` (Slicer >= 5.11,
  ``slicer.pydeps``: asks, shows progress, skips in testing mode, offers a
  restart) or, on older Slicer, ``slicer.util.pip_install`` after a confirmation.
- Never reinstalls what Slicer ships (numpy, SimpleITK, vtk, requests, pydicom).
- Lines marked ``# optional`` in requirements.txt (e.g. matplotlib, only for
  batch overlay pictures) are never installed automatically.
- Declining, or an install that changed nothing, returns False: a restart is
  asked for only when something was really installed but cannot be used yet.

``requirements_status`` is Slicer-free so it can be tested anywhere.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import re
from pathlib import Path
from typing import Optional

SLICER_SHIPPED = {"numpy", "simpleitk", "vtk", "requests", "pydicom"}
REQUIREMENTS = Path(__file__).resolve().parents[2] / "Resources" / "requirements.txt"
IMPORT_NAMES = {"pynrrd": "nrrd", "pillow": "PIL", "scikit-image": "skimage"}


class RestartRequired(Exception):
    """Packages were installed but Slicer must restart before they can be imported."""


def read_requirements(path: Path = REQUIREMENTS, optional: bool = False) -> list[str]:
    """Requirement lines of ``path``; those whose comment starts with ``optional`` only when ``optional``."""
    lines = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line, _sep, comment = raw.partition("#")
        line = line.strip()
        if line and (optional or not comment.strip().lower().startswith("optional")):
            lines.append(line)
    return lines


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, 1)[0].strip().lower()


def _version_ok(req: str, installed: str) -> bool:
    """Minimal ``>=`` check (enough for our requirements file)."""
    m = re.search(r">=\s*([0-9][0-9.]*)", req)
    if not m:
        return True

    def key(v: str) -> tuple:
        return tuple(int(x) for x in re.findall(r"\d+", v)[:3])

    return key(installed) >= key(m.group(1))


def requirements_status(requirements: Optional[list[str]] = None) -> dict[str, str]:
    """``{requirement: "ok" | "missing" | "outdated (x.y)"}`` (Slicer-shipped ones skipped)."""
    out = {}
    for req in requirements if requirements is not None else read_requirements():
        name = _name(req)
        if name in SLICER_SHIPPED:
            continue
        try:
            ver = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            ver = None
        if ver is None and importlib.util.find_spec(IMPORT_NAMES.get(name, name)) is None:
            out[req] = "missing"
        elif ver is not None and not _version_ok(req, ver):
            out[req] = f"outdated ({ver})"
        else:
            out[req] = "ok"
    return out


def missing_requirements(requirements: Optional[list[str]] = None) -> list[str]:
    return [r for r, s in requirements_status(requirements).items() if s != "ok"]


def _pip_ensure(slicer):
    """Slicer's ``pip_ensure`` (``slicer.pydeps`` in 5.11+, also tried in older places) or None."""
    for holder in ("pydeps", "util", "packaging"):
        mod = getattr(slicer, holder, None)
        if mod is None and holder == "pydeps":
            try:
                import slicer.pydeps as mod  # noqa: PLW0621 - not imported by default
            except ImportError:
                mod = None
        if mod is not None and callable(getattr(mod, "pip_ensure", None)):
            return mod.pip_ensure
    return None


def _as_requirements(reqs: list[str]) -> list:
    """``packaging`` Requirement objects (what ``pip_ensure`` expects) when available."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - Slicer always has packaging
        return list(reqs)
    return [Requirement(r) for r in reqs]


def _supported_kwargs(func, **kwargs) -> dict:
    """The keyword arguments ``func`` accepts (``pip_ensure``'s options differ between Slicer versions)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def ensure_dependencies(askConfirmation: bool = True) -> bool:
    """Make sure torch + requirements are importable.

    Returns True when everything is importable, False when the user declined or
    nothing could be installed (e.g. testing mode). Raises ``RestartRequired``
    only when packages were installed that need a Slicer restart (e.g. torch
    replaced while already imported, or a new package not importable yet).
    """
    import sys

    import slicer

    missing = missing_requirements()
    if not missing:
        return True
    torch_missing = [r for r in missing if _name(r) == "torch"]
    others = [r for r in missing if _name(r) != "torch"]
    torch_was_imported = "torch" in sys.modules

    if torch_missing:
        try:
            import PyTorchUtils  # provided by the PyTorch extension
        except ImportError:
            PyTorchUtils = None
        if PyTorchUtils is not None:
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askConfirmation,
                                                                    torchVersionRequirement=">=2.1")
            if torch is None:
                return False
        else:
            others = torch_missing + others

    if others:
        pip_ensure = _pip_ensure(slicer)
        if pip_ensure is not None:
            try:
                pip_ensure(_as_requirements(others), **_supported_kwargs(
                    pip_ensure, requester="Liver CT Segmentation", skip_packages=sorted(SLICER_SHIPPED),
                    prompt_install=askConfirmation))
            except RuntimeError:  # pip_ensure's way of saying "the user declined"
                return False
        else:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                "Liver CT Segmentation needs these Python packages:\n\n  " + "\n  ".join(others)
                + "\n\nInstall them now? This downloads them from the Python Package Index and may take a few minutes."
            ):
                return False
            slicer.util.pip_install(" ".join(f'"{r}"' for r in others))

    importlib.invalidate_caches()
    still = missing_requirements()
    if set(still) == set(missing):
        return False  # nothing was installed (declined, skipped in testing mode): no restart can help
    if still or (torch_missing and torch_was_imported):
        raise RestartRequired(
            "The dependencies were installed, but Slicer must be restarted before they can be used"
            + (f" (still not importable: {', '.join(still)})" if still else "") + ". Restart Slicer and press Apply again."
        )
    return True
