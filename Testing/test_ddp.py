"""torchrun with 2 CPU processes (gloo): both ranks end with identical weights, rank 0 saves."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from test_training_loop import tiny_overrides  # noqa: E402

LAUNCH = textwrap.dedent("""
    import json, os, sys
    from liverct_training.config import load_config
    from liverct_training.train import train
    res = train(load_config(sys.argv[1], sys.argv[3:]))
    with open(os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(res, f)
""")


def test_torchrun_two_ranks_identical_weights(tmp_path):
    from liverct_training.train import weights_digest

    from LiverCTSegmentationLib.engine.networks import build_network

    script = tmp_path / "launch.py"
    script.write_text(LAUNCH)
    run = tmp_path / "run"
    ov = tiny_overrides(run, tmp_path / "cache") + [
        "train.stages=[coarse]", "train.epochs=1", "train.iterations_per_epoch=2",
        "output.mlflow=false", "output.plots=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), "phantom", str(tmp_path), *ov]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())["coarse"]
    r1 = json.loads((tmp_path / "rank1.json").read_text())["coarse"]
    assert r0["world_size"] == r1["world_size"] == 2 and {r0["rank"], r1["rank"]} == {0, 1}
    assert r0["weights_sha256"] == r1["weights_sha256"]
    # Rank 0 wrote the checkpoint, and it holds exactly the weights both ranks ended with.
    state = torch.load(run / "last_coarse.pt", weights_only=True)
    net = build_network(load_cfg_arch(run))
    net.load_state_dict(state["model"])
    assert weights_digest(net) == r0["weights_sha256"]
    assert len(list(run.glob("last_coarse.pt*"))) == 1


def load_cfg_arch(run):
    from liverct_training.config import load_config

    return load_config(run / "config.yaml")["stages"]["coarse"]["architecture"]
