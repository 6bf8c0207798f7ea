"""bench/bench_onnxruntime.py: it skips cleanly without ONNX Runtime (not a project dependency), and the
session it times computes the torch module's logits."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_onnxruntime as B  # noqa: E402


def test_without_onnxruntime_it_says_skip(block_imports, capsys):
    block_imports("onnxruntime")
    assert B.main([]) == 0
    assert "SKIP: onnxruntime/onnxscript are not installed" in capsys.readouterr().out


def test_exported_session_gives_the_modules_logits_on_other_shapes(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import torch

    from LiverCTSegmentationLib.engine.networks import build_network

    torch.manual_seed(0)
    net = build_network({"name": "reduced_unet3d", "in_channels": 1, "out_channels": 3, "channels": [4, 8],
                         "norm": "batch", "stem_stride": 2}).eval()
    sess = B.session(B.export(net, tmp_path, "fine"), threads=1)
    x = torch.randn(1, 1, 16, 24, 40)  # not the 32^3 shape it was exported with: the dims are dynamic
    with torch.inference_mode():
        ref = net(x)
    out = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() < 1e-4

