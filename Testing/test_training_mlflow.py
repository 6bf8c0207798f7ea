"""MLflow records a run completely: config params, environment tags, per-epoch metrics and artifacts."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")
mlflow = pytest.importorskip("mlflow")

from liverct_training.config import load_config  # noqa: E402
from liverct_training.train import train  # noqa: E402
from test_training_loop import tiny_overrides  # noqa: E402


def _mlflow_run(run_dir: Path):
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("liverct-phantom")
    assert exp is not None, "the preset's experiment name is used"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_mlflow_logs_params_env_tags_metrics_and_artifacts(tmp_path):
    run_dir = tmp_path / "run"
    ov = tiny_overrides(run_dir, tmp_path / "cache") + ["train.stages=[coarse]", "train.iterations_per_epoch=2",
                                                        "train.lr=0.0025", "output.mlflow=true"]
    train(load_config("phantom", ov))
    client, run = _mlflow_run(run_dir)
    assert run.info.status == "FINISHED"

    params = run.data.params
    assert params["train.lr"] == "0.0025" and params["train.epochs"] == "2"
    assert params["stages.coarse.spacing"] == "[6, 6, 6]" and params["data.kind"] == "phantom"

    tags = run.data.tags
    assert tags["env.torch"] == torch.__version__
    head = subprocess.run(["git", "-C", str(Path(__file__).parents[1]), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    if head:
        assert tags["env.git_revision"].split("+")[0] == head
    for key in ("env.python", "env.numpy", "env.cpu", "env.monai", "env.mlflow"):
        assert tags.get(key), key

    hist = client.get_metric_history(run.info.run_id, "coarse.train_loss")
    assert sorted(m.step for m in hist) == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "coarse.val_dice")) == 2

    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "train_summary.json", "plots"} <= top
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/curves_coarse.png", "plots/overlay_coarse.png"} <= plots
    logged = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "dl")))
    assert load_config(logged)["train"]["lr"] == 0.0025


def test_failed_run_is_marked_failed(tmp_path, monkeypatch):
    from liverct_training import train as T

    def boom(*a, **k):
        raise RuntimeError("stage exploded")

    monkeypatch.setattr(T, "train_stage", boom)
    run_dir = tmp_path / "run"
    ov = tiny_overrides(run_dir, tmp_path / "cache") + ["train.stages=[coarse]", "output.mlflow=true"]
    with pytest.raises(RuntimeError, match="exploded"):
        train(load_config("phantom", ov))
    _, run = _mlflow_run(run_dir)
    assert run.info.status == "FAILED" and run.data.params["train.epochs"] == "2"
