"""bench/bench_training.py measures what training runs: merged class weights, the same autocast and step."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_training as B  # noqa: E402
from liverct_training.config import load_config  # noqa: E402

CPU = torch.device("cpu")


def test_stage_setup_takes_training_level_class_weights():
    # msd_lung_tumor sets class_weights under train:, not under stages.coarse.train.
    assert B.stage_setup(load_config("msd_lung_tumor"), "coarse", CPU)["class_weights"] == [1.0, 1.0]
    cfg = load_config("phantom")
    assert B.stage_setup(cfg, "fine", CPU)["class_weights"] == [1.0, 1.0, 2.0]  # the stage's own still wins
    assert B.stage_setup(cfg, "coarse", CPU)["class_weights"] is None
    cfg = load_config("phantom", ["train.class_weights=[1.0, 3.0]"])
    assert B.stage_setup(cfg, "coarse", CPU)["class_weights"] == [1.0, 3.0]


def test_stage_setup_uses_trainings_autocast_choice(monkeypatch):
    cfg = load_config("phantom")
    assert B.stage_setup(cfg, "coarse", CPU)["amp"] is None  # CPU: fp32 as before
    bf16 = load_config("phantom", ["train.amp=bf16", "train.use_bf16=true"])
    assert B.stage_setup(bf16, "coarse", CPU)["amp"] == torch.bfloat16
    # CUDA: whatever train.autocast_dtype picks (no GPU needed to ask it).
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert B.stage_setup(cfg, "coarse", torch.device("cuda"))["amp"] == torch.bfloat16
    fp16 = load_config("phantom", ["train.amp=fp16"])
    assert B.stage_setup(fp16, "coarse", torch.device("cuda"))["amp"] == torch.float16


def test_worker_times_one_step_on_cpu(capsys):
    # A tiny full-resolution net at batch 2: at 16^3 the preset's stride-2 stem leaves 2^3 voxels for
    # batch norm, which in bf16 gave a NaN loss in about one run in three.
    tiny = ["stages.coarse.architecture.channels=[4,8,16]", "stages.coarse.architecture.stem_stride=1",
            "train.batch_size=2"]
    out = B.worker("phantom", "coarse", "cpu", threads=2, steps=1, cap=16, overrides=tiny)
    assert out["amp"] == "fp32" and out["patch"] == [16, 16, 16] and math.isfinite(out["loss"])
    out = B.worker("phantom", "coarse", "cpu", threads=2, steps=1, cap=16,
                   overrides=tiny + ["train.amp=bf16", "train.use_bf16=true"])
    assert out["amp"] == "bfloat16" and math.isfinite(out["loss"])
