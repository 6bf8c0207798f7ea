"""GPU warm-up (engine.warmup): no thread on a CPU; the warm-up itself runs every stage's network
and the torch resampler (checked here on the CPU, where the same code runs), and the bundle's network
cache hands one network to concurrent callers."""
from __future__ import annotations

import threading

import pytest
import torch

from LiverCTSegmentationLib import models
from LiverCTSegmentationLib.engine import warmup
from LiverCTSegmentationLib.engine.bundle import ModelBundle


@pytest.fixture
def bundle() -> ModelBundle:
    return ModelBundle.load(models.resolve_model("liverct-phantom-demo"))


def test_no_thread_on_cpu(bundle):
    assert warmup.start_warm_up(bundle, "cpu") is None
    assert bundle._cache == {}


def test_warm_runs_every_stage_network(bundle):
    warmup._warm(bundle, torch.device("cpu"), bf16=False)
    assert set(bundle._cache) == {("coarse", "cpu"), ("fine", "cpu")}


def test_network_cache_is_shared_between_threads(bundle):
    got, barrier = [], threading.Barrier(4)

    def grab():
        barrier.wait()
        got.append(bundle.network("fine", "cpu"))

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(n is got[0] for n in got)


def test_the_io_library_is_loaded_before_the_first_case_on_a_cpu(tmp_path):
    """A case's read stage must not pay for loading SimpleITK (once per process, like torch)."""
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import sys; from LiverCTSegmentationLib import models; "
            "from LiverCTSegmentationLib.engine.bundle import ModelBundle; "
            "from LiverCTSegmentationLib.engine.warmup import start_warm_up; "
            "b = ModelBundle.load(models.resolve_model('liverct-phantom-demo')); before = 'SimpleITK' in sys.modules; "
            "t = start_warm_up(b, 'cpu'); print(before, 'SimpleITK' in sys.modules, t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "LiverCTSegmentation")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True", "None"]
