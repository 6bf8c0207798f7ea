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
