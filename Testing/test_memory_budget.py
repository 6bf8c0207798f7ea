"""Memory budget: too-large volumes are refused before any big allocation, and
the pipeline's own working memory stays within what ``checks`` budgets for.

Huge-looking volumes are zero-stride numpy views (``np.broadcast_to``), so a
16 GB "CT" costs a few bytes; ``tracemalloc`` (which numpy reports its buffers
to) proves the refusal itself allocates almost nothing. test_checks.py already
covers that the limit is applied; these tests cover *when* and *at what cost*.
"""
from __future__ import annotations

import os
import sys
import time
import tracemalloc

import numpy as np
import pytest

from LiverCTSegmentationLib.engine import checks
from LiverCTSegmentationLib.engine.errors import ResourceError
from LiverCTSegmentationLib.engine.volume import Volume

SMALL_BUDGET = 2 << 30  # 2 GiB
ONE_MB = 1 << 20


def _traced_peak(fn) -> tuple[int, BaseException | None]:
    """Peak bytes allocated (numpy + Python) while ``fn`` runs, and what it raised."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    err = None
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - returned to the test
        err = e
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak, err


@pytest.mark.parametrize("dtype,fill", [(np.int16, -1000), (np.float32, np.nan), (np.float64, 40.0)])
def test_huge_volume_is_refused_from_its_shape_alone(dtype, fill) -> None:
    # 2000^3 voxels: 16-64 GB if it were real; the NaN variant also proves the memory check
    # runs before the full-array NaN scan (which would take minutes on a real array).
    huge = Volume(np.broadcast_to(np.asarray(fill, dtype=dtype), (2000, 2000, 2000)), (0.8, 0.8, 1.0))
    t = time.perf_counter()
    peak, err = _traced_peak(lambda: checks.check_volume(huge, available_bytes=SMALL_BUDGET))
    assert time.perf_counter() - t < 2.0
    assert isinstance(err, ResourceError), err
    msg = str(err)
    assert "memory" in msg and "2.0 GB" in msg and "Crop" in msg
    assert peak < ONE_MB, f"refusal allocated {peak / ONE_MB:.1f} MB"


def test_refusal_of_a_real_array_allocates_nothing_proportional_to_it() -> None:
    arr = np.full((96, 256, 256), -1000, np.int16)  # 12 MB, really allocated
    vol = Volume(arr, (0.8, 0.8, 1.0))
    need = checks.estimate_peak_bytes(arr.shape)
    peak, err = _traced_peak(lambda: checks.check_volume(vol, available_bytes=need - 1))
    assert isinstance(err, ResourceError)
    assert peak < arr.nbytes // 100, f"refusal allocated {peak} bytes for a {arr.nbytes} byte image"
    # one byte more budget: the same image passes the memory gate (and fails later, on content)
    _peak, err = _traced_peak(lambda: checks.check_volume(vol, available_bytes=need))
    assert not isinstance(err, ResourceError)


def test_estimate_grows_linearly_with_voxels() -> None:
    base = checks.estimate_peak_bytes((100, 512, 512)) - checks.FIXED_OVERHEAD_BYTES
    for n in (300, 600):
        extra = checks.estimate_peak_bytes((n, 512, 512)) - checks.FIXED_OVERHEAD_BYTES
        assert extra == base * n // 100
    # a 512x512x300 CT must fit the 1 GB benchmark target's budget class (see bench/RESULTS.md)
    assert checks.estimate_peak_bytes((300, 512, 512)) < 2 << 30


def test_pipeline_numpy_working_memory_stays_within_the_per_voxel_budget(tmp_path) -> None:
    """The pipeline's numpy peak (torch/ITK buffers are not traced) is below the per-voxel
    budget that ``checks`` reserves: it never holds full-resolution float arrays."""
    from bundle_fixtures import make_box_bundle
    from LiverCTSegmentationLib.engine import pipeline
    from LiverCTSegmentationLib.engine.bundle import ModelBundle

    mb = ModelBundle.load(make_box_bundle(tmp_path / "box", liver_hu=(60.0, 200.0), coarse_spacing=4.0,
                                          fine_spacing=2.0, margin_mm=8.0))
    shape = (64, 128, 128)
    k, j, i = np.ogrid[:shape[0], :shape[1], :shape[2]]
    ct = np.full(shape, -1000, np.int16)
    ct[:, (((i - 64) / 50.0) ** 2 + ((j - 64) / 45.0) ** 2 < 1)[0]] = 40
    ct[((i - 50) / 30.0) ** 2 + ((j - 60) / 25.0) ** 2 + ((k - 32) / 20.0) ** 2 < 1] = 120
    vol = Volume(ct, (1.5, 1.5, 1.5))
    opts = pipeline.SegmentOptions(device="cpu", overlap=0.25)
    pipeline.segment(vol, mb, opts)  # warm-up: lazy imports and network cache are not per-image costs
    result: list = []
    peak, err = _traced_peak(lambda: result.append(pipeline.segment(vol, mb, opts)))
    assert err is None, err
    labels = result[0].labelmap.array
    assert (labels == 1).sum() > 1000  # it really segmented something
    per_voxel = peak / ct.size
    assert per_voxel < checks.BYTES_PER_VOXEL, f"{per_voxel:.1f} bytes/voxel traced"
    # stricter: not even one float32 copy of the input grid (measured ~2.4: uint8 labels + lesion ids)
    assert per_voxel < 4.0, f"{per_voxel:.1f} bytes/voxel: a full-resolution float array was allocated"


_FINE_PASS = """
import sys, numpy as np, torch
from LiverCTSegmentationLib import models
from LiverCTSegmentationLib.engine.bundle import ModelBundle
from LiverCTSegmentationLib.engine.progress import Progress
from LiverCTSegmentationLib.engine.stage_pass import run_stage
from LiverCTSegmentationLib.engine.volume import Volume

def kib(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))

torch.set_num_threads(2)
mb = ModelBundle.load(models.resolve_model(None))
rng = np.random.default_rng(0)
n = int(sys.argv[1])
budget = int(sys.argv[2]) if len(sys.argv) > 2 else 168 ** 3 // 2
args = (torch.device("cpu"), False, 0.5, 2, Progress(), budget)
run_stage(mb, "fine", Volume(rng.integers(-100, 200, (32,) * 3).astype(np.int16), (1.5,) * 3), *args)  # warm-up
vol = Volume(rng.integers(-100, 200, (n,) * 3).astype(np.int16), (1.5,) * 3)
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the peak (VmHWM) to the current RSS
before = kib("VmRSS")
run_stage(mb, "fine", vol, *args)
print((kib("VmHWM") - before) * 1024 / n ** 3)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS reset via /proc is Linux-only")
def test_fine_pass_working_memory_per_voxel_is_small() -> None:
    """A float32 CPU fine pass over one 128^3 window (1.5 mm: a liver box) holds < 100 bytes per
    voxel beyond its input (measured ~50 with engine/fast_unet; the torch module needed ~320),
    so the window budget, not the liver, sets the network's memory (README, "Memory")."""
    import subprocess

    env = {**os.environ, "LIVERCT_NO_BF16": "1", "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", _FINE_PASS, "128"], capture_output=True, text=True, env=env,
                         timeout=300)
    if out.returncode != 0 and "clear_refs" in out.stderr:
        pytest.skip("this kernel does not allow resetting the peak RSS")
    assert out.returncode == 0, out.stderr[-2000:]
    per_voxel = float(out.stdout.strip().splitlines()[-1])
    assert per_voxel < 100.0, f"fine pass: {per_voxel:.0f} bytes per window voxel"


def _fine_pass_peak_mb(n: int, budget: int) -> float:
    """MB the fine pass over an n^3 box at 1.5 mm adds to the peak RSS, in a fresh process (float32 CPU).

    glibc's mmap threshold is fixed at 128 KiB, so every large block goes back to the OS when freed and
    the peak is the live working memory: with its default, self-adjusting threshold the same run's peak
    wandered by up to 80 MB between runs (allocator slack, not the pipeline's arrays)."""
    import subprocess

    env = {**os.environ, "LIVERCT_NO_BF16": "1", "OMP_NUM_THREADS": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", _FINE_PASS, str(n), str(budget)], capture_output=True, text=True,
                         env=env, timeout=300)
    if out.returncode != 0 and "clear_refs" in out.stderr:
        pytest.skip("this kernel does not allow resetting the peak RSS")
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip().splitlines()[-1]) * n ** 3 / 2 ** 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS reset via /proc is Linux-only")
def test_one_window_at_the_full_cpu_budget_needs_under_200_mb() -> None:
    """README ("Speed and memory"): a liver box that fits the CPU window budget runs as one window whose
    working memory is under 0.2 GB (measured 140 MB live for 160^3, 87 % of the budget)."""
    from LiverCTSegmentationLib.engine.inference import default_window_voxels

    budget = default_window_voxels(False, "cpu")
    assert 160 ** 3 <= budget < 176 ** 3  # 160^3 (divisor 16) is the largest cube run as one window
    one = _fine_pass_peak_mb(160, budget)
    assert one < 200.0, f"one window at the full budget: {one:.0f} MB"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS reset via /proc is Linux-only")
def test_a_tiled_box_grows_the_peak_by_its_stage_arrays_only() -> None:
    """README: a box larger than the budget is tiled into windows within it, so only the stage grid's
    own arrays (input and its padded copy, blended class scores) grow with the box: measured 22 bytes
    per 1.5 mm voxel between a 176^3 and a 224^3 box (305 -> 427 MB live)."""
    from LiverCTSegmentationLib.engine.inference import default_window_voxels

    budget = default_window_voxels(False, "cpu")
    small, large = _fine_pass_peak_mb(176, budget), _fine_pass_peak_mb(224, budget)
    slope = (large - small) * 2 ** 20 / (224 ** 3 - 176 ** 3)
    assert slope < 30.0, f"176^3 -> 224^3 box: {small:.0f} -> {large:.0f} MB, {slope:.0f} B per stage voxel"


def test_stage_grid_holds_no_voxels_beside_the_network_input() -> None:
    """The resampled float32 copy is not kept beside its normalised twin during the network pass."""
    from LiverCTSegmentationLib.engine.stage_pass import stage_array

    stage = type("Stage", (), {"spacing": (3.0, 3.0, 3.0), "orientation": "canonical",
                               "intensity": {"clip": [-200.0, 300.0], "mean": 50.0, "std": 125.0}})()
    vol = Volume(np.full((40, 64, 64), 40, np.int16), (1.5, 1.5, 1.5))
    grid, x = stage_array(vol, stage)
    assert x.dtype == np.float32 and x.shape == grid.shape_kji[:3] == (20, 32, 32)
    assert all(s == 0 for s in grid.array.strides), "the stage grid keeps a full voxel array"
