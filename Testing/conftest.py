"""Shared pytest configuration: slow-test opt-in, real-data location, threads."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Import the engine from the source tree even when the package is not installed.
sys.path.insert(0, str(ROOT / "LiverCTSegmentation"))
sys.path.insert(0, str(ROOT / "Testing"))

# CI machines have 2 cores; keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")

REAL_DATA_DIR = Path(os.environ.get("LIVERCT_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if config.getoption("--runslow") or os.environ.get("LIVERCT_RUNSLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not (REAL_DATA_DIR / "SHA256SUMS").exists():
        pytest.skip(f"real CT data not found at {REAL_DATA_DIR}")
    return REAL_DATA_DIR



@pytest.fixture
def block_imports(monkeypatch):
    """``block_imports("isal", ...)``: importing those packages (or their submodules) raises ImportError
    for the rest of the test, as on an installation without them."""
    import builtins

    real_import = builtins.__import__

    def block(*names: str) -> None:
        def guarded(name, *args, **kwargs):
            if any(name == n or name.startswith(n + ".") for n in names):
                raise ImportError(f"{name} is blocked for this test")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", guarded)

    return block


@pytest.fixture
def scene():
    """A fresh real MRML scene (slicer-core) with the module logics registered on ``slicer``."""
    import slicer_fakes

    sc = slicer_fakes.setup_core_scene()
    yield sc
    sc.Clear(True)


# slicer-core's teardown can crash the interpreter after the last test: at exit, VTK's Python layer
# deletes a vtkMRMLColorLogic whose destructor fires scene events into a displayable manager of an
# already-deleted view (gdb: vtkMRMLLinearTransformsDisplayableManager::UpdateFromMRML from
# ~vtkMRMLColorLogic via vtkPythonUtilDelete; about one full run in three, exit code 139 although
# every test passed). Once pytest has reported, the process ends here with pytest's own exit status,
# skipping only that C++ static teardown. LIVERCT_NORMAL_EXIT=1 keeps the normal interpreter exit.
_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if "vtkmodules" in sys.modules and os.environ.get("LIVERCT_NORMAL_EXIT") != "1" and _EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[_EXIT_STATUS])
