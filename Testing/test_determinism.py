"""Same seed -> bit-identical weights and metrics; another seed -> different weights (CPU)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from liverct_training.config import load_config  # noqa: E402
from liverct_training.determinism import sample_rng  # noqa: E402
from liverct_training.train import train  # noqa: E402
from test_training_loop import tiny_overrides  # noqa: E402


def test_sample_rng_depends_on_every_key():
    a = sample_rng(0, 0, 0, 5).random(3)
    assert np.array_equal(a, sample_rng(0, 0, 0, 5).random(3))
    for other in [(1, 0, 0, 5), (0, 1, 0, 5), (0, 0, 1, 5), (0, 0, 0, 6)]:
        assert not np.array_equal(a, sample_rng(*other).random(3))


def _run(tmp_path, name, seed):
    run = tmp_path / name
    ov = tiny_overrides(run, tmp_path / "cache", seed) + [
        "train.stages=[coarse]", "train.epochs=1", "train.iterations_per_epoch=3",
        "output.mlflow=false", "output.plots=false"]
    train(load_config("phantom", ov))
    state = torch.load(run / "last_coarse.pt", weights_only=False)
    hist = [{k: v for k, v in h.items() if k != "sec_per_iter"} for h in json.loads((run / "history_coarse.json").read_text())]
    return state["model"], hist


def test_same_seed_bit_identical_other_seed_differs(tmp_path):
    w1, h1 = _run(tmp_path, "a", 0)
    w2, h2 = _run(tmp_path, "b", 0)
    w3, _ = _run(tmp_path, "c", 1)
    assert set(w1) == set(w2)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert h1 == h2
    assert any(not torch.equal(w1[k], w3[k]) for k in w1 if w1[k].is_floating_point())
