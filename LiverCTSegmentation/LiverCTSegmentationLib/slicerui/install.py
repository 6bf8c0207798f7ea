"""Install the module's Python dependencies inside Slicer, with the user's consent.

- torch: through the PyTorch extension (``PyTorchUtils``), which asks first
  and picks the CUDA build matching the driver.
- the rest (``Resources/requirements.txt``): ``slicer.packaging.pip_ensure``
  (Slicer >= 5.11: asks, shows progress, skips in testing mode, offers a
  restart) or, on older Slicer, ``slicer.util.pip_install`` after a confirmation.
- Never reinstalls what Slicer ships (numpy, SimpleITK, vtk, requests, pydicom).

``requirements_status`` is Slicer-free so it can be tested anywhere.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path
from typing import Optional

SLICER_SHIPPED = {"numpy", "simpleitk", "vtk", "requests", "pydicom"}
REQUIREMENTS = Path(__file__).resolve().parents[2] / "Resources" / "requirements.txt"
IMPORT_NAMES = {"pynrrd": "nrrd", "pillow": "PIL", "scikit-image": "skimage"}


class RestartRequired(Exception):
    """Packages were installed but Slicer must restart before they can be imported."""


def read_requirements(path: Path = REQUIREMENTS) -> list[str]:
    lines = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
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


def ensure_dependencies(askConfirmation: bool = True) -> bool:
    """Make sure torch + requirements are importable. Returns False if the user declined.

    Raises ``RestartRequired`` when packages were installed that need a Slicer
    restart (e.g. torch replaced while already imported).
    """
    import slicer

    missing = missing_requirements()
    if not missing:
        return True
    torch_missing = [r for r in missing if _name(r) == "torch"]
    others = [r for r in missing if _name(r) != "torch"]
    torch_was_imported = importlib.util.find_spec("torch") is not None and "torch" in __import__("sys").modules

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
        packaging = getattr(slicer, "packaging", None)
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            packaging.pip_ensure(others, requester="Liver CT Segmentation",
                                 skip_packages=sorted(SLICER_SHIPPED))
        else:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                "Liver CT Segmentation needs these Python packages:\n\n  " + "\n  ".join(others)
                + "\n\nInstall them now? This downloads them from the Python Package Index and may take a few minutes."
            ):
                return False
            slicer.util.pip_install(" ".join(f'"{r}"' for r in others))

    still = missing_requirements()
    if still or (torch_missing and torch_was_imported):
        raise RestartRequired(
            "The dependencies were installed, but Slicer must be restarted before they can be used"
            + (f" (still not importable: {', '.join(still)})" if still else "") + ". Restart Slicer and press Apply again."
        )
    return True
