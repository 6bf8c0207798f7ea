"""Where the bundled models and the sample CT are, in a source checkout or Slicer extension
(``LiverCTSegmentation/Resources``) and in a pip-installed wheel (the same folder shipped as
package data ``LiverCTSegmentationLib/_bundled``, see pyproject.toml)."""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def resources_dir() -> Path:
    """The folder holding ``Models/`` and ``Samples/``."""
    for candidate in (_HERE.parent / "Resources", _HERE / "_bundled"):
        if (candidate / "Models").is_dir():
            return candidate
    return _HERE.parent / "Resources"  # missing: callers say "reinstall"
