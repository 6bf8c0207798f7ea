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
