"""bench/bench_io.py runs, checks every read path against ITK voxel for voxel, and leaves isal importable."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_io  # noqa: E402


def test_quick_run_prints_every_row(tmp_path, capsys):
    pytest.importorskip("isal")
    pytest.importorskip("rapidgzip")
    assert bench_io.main(["--quick", "--repeat", "1", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for row in ("ITK alone", "without isal", "inflating with zlib", "fast path, ISA-L", "parallel inflate, rapidgzip",
                "gzip level 6", "gzip level 1, whole grid", "labelled box only", "as gzip .nrrd", "as raw (ours) .nrrd"):
        assert row in out, row
    import isal  # noqa: F401  (the blocked-import context was undone)
    from LiverCTSegmentationLib.engine import nifti_gz

    assert nifti_gz._isal() is not None and nifti_gz.gunzip.__module__ == nifti_gz.__name__
    assert nifti_gz.PARALLEL_MIN_CORES == 4  # the forced on/off contexts were undone too
