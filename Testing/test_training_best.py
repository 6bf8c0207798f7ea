"""Model selection: only validation rounds choose best_<stage>.pt; without validation cases best = last."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from liverct_training import train as T  # noqa: E402
from liverct_training.config import load_config  # noqa: E402
from test_training_loop import tiny_overrides  # noqa: E402


def _cfg(tmp_path, *extra: str) -> dict:
    ov = tiny_overrides(tmp_path / "run", tmp_path / "cache") + [
        "train.stages=[coarse]", "train.iterations_per_epoch=2", "train.warmup_iterations=0",
        "output.mlflow=false", "output.plots=false", *extra]
    return load_config("phantom", ov)


def test_is_improvement_rules():
    assert T.is_improvement(0.5, -1.0, has_val=True)
    assert not T.is_improvement(0.4, 0.5, has_val=True)
    assert not T.is_improvement(None, 0.5, has_val=True)  # an epoch without validation selects nothing
    assert T.is_improvement(None, -1.0, has_val=False)    # no val cases at all: best = last


def test_val_every_2_keeps_the_best_validated_weights(tmp_path, monkeypatch):
    scores = iter([0.8, 0.3])  # epoch 2 is the best, epoch 4 is worse
    seen: list[dict] = []

    def fake_validate(model, val, st, device, info):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        s = next(scores)
        return {"val_dice_1": s, "val_dice": s}, None

    monkeypatch.setattr(T, "validate", fake_validate)
    cfg = _cfg(tmp_path, "train.epochs=4", "train.val_every=2")
    T.train(cfg)
    run = tmp_path / "run"
    hist = json.loads((run / "history_coarse.json").read_text())
    assert [("val_dice" in h) for h in hist] == [False, True, False, True]
    assert len(seen) == 2
    best = torch.load(run / "best_coarse.pt", weights_only=True)
    last = torch.load(run / "last_coarse.pt", weights_only=True)["model"]
    floats = [k for k in best if best[k].is_floating_point()]
    assert all(torch.equal(best[k], seen[0][k]) for k in best), "best must be the epoch-2 (validated best) weights"
    assert any(not torch.equal(best[k], last[k]) for k in floats), "weights kept training after epoch 2"


def test_no_validation_cases_best_is_last(tmp_path):
    cfg = _cfg(tmp_path, "train.epochs=2", "data.phantom.n_val=0")
    T.train(cfg)
    run = tmp_path / "run"
    best = torch.load(run / "best_coarse.pt", weights_only=True)
    last = torch.load(run / "last_coarse.pt", weights_only=True)
    assert last["epoch"] == 1 and all(torch.equal(best[k], last["model"][k]) for k in best)
    assert all("val_dice" not in h for h in json.loads((run / "history_coarse.json").read_text()))
