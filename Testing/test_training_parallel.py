"""Process-parallel data preparation (data.prepare_jobs): same files as a sequential run, errors surface."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from LiverCTSegmentationLib.engine import io
from liverct_training.parallel import resolve_jobs, run_jobs
from liverct_training.phantom_data import generate_phantoms

PCFG = {"n_train": 3, "n_val": 1, "n_test": 0, "seed": 4242, "shape_kji": [24, 48, 48],
        "spacings": [[3.0, 3.0, 5.0], [2.5, 2.5, 4.0]], "orientations": ["LPS", "RAS"]}


def _fail_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("case 2 is broken")
    return x * 10


def test_resolve_jobs() -> None:
    assert resolve_jobs(None) == 1 and resolve_jobs(1) == 1 and resolve_jobs(3) == 3
    from LiverCTSegmentationLib.engine.device import usable_cores

    assert resolve_jobs(0) == resolve_jobs(-1) == usable_cores() >= 1


def test_run_jobs_keeps_order_and_reraises() -> None:
    assert run_jobs(_fail_on_two, [(1,), (3,), (5,)], jobs=2) == [10, 30, 50]
    with pytest.raises(ValueError, match="case 2 is broken"):
        run_jobs(_fail_on_two, [(1,), (2,), (3,)], jobs=2)


def test_parallel_phantom_generation_matches_sequential(tmp_path: Path) -> None:
    seq = generate_phantoms(tmp_path / "seq", PCFG, jobs=1)
    par = generate_phantoms(tmp_path / "par", PCFG, jobs=2)
    assert {k: [c.case_id for c in v] for k, v in seq.items()} == {k: [c.case_id for c in v] for k, v in par.items()}
    for a, b in zip(seq["train"] + seq["val"], par["train"] + par["val"]):
        va, vb = io.read_volume(a.image_path), io.read_volume(b.image_path)
        assert va.same_grid(vb)
        np.testing.assert_array_equal(va.array, vb.array)
        np.testing.assert_array_equal(io.read_volume(a.label_path).array, io.read_volume(b.label_path).array)
    # A second call finds every phantom complete (manifest written last) and regenerates nothing.
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "par").iterdir()}
    generate_phantoms(tmp_path / "par", PCFG, jobs=2)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "par").iterdir()} == before


def test_parallel_cache_prebuild_matches_sequential(tmp_path: Path) -> None:
    from liverct_training.config import load_config
    from liverct_training.train import load_stage_cases

    cases = generate_phantoms(tmp_path / "ph", PCFG, jobs=1)["train"]
    ov = ["stages.coarse.spacing=[6.0, 6.0, 6.0]", "stages.coarse.patch_size=[16, 16, 16]",
          "stages.coarse.architecture.channels=[4, 8, 16]"]
    out = {}
    for jobs in (1, 2):
        cfg = load_config("phantom", ov + [f"data.prepare_jobs={jobs}", f"data.cache_dir={tmp_path / f'c{jobs}'}"])
        out[jobs] = load_stage_cases(cases, "coarse", cfg["stages"]["coarse"], cfg, "test")
        assert len(list((tmp_path / f"c{jobs}").iterdir())) == len(cases)
    for a, b in zip(out[1], out[2]):
        assert a.case_id == b.case_id
        np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
        np.testing.assert_array_equal(np.asarray(a.target), np.asarray(b.target))
