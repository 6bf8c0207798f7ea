"""bench/bench_int8.py: the int8 module it times is a real quantised network whose labels it compares
with float32's, and it skips cleanly without the real CTs."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_int8 as B  # noqa: E402


def test_without_the_real_cts_it_says_skip(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(B.R, "CHAOS", tmp_path / "absent_ct.nii.gz")
    assert B.main(["--isa", "native"]) == 0
    assert "SKIP:" in capsys.readouterr().out


def test_label_agreement_counts_liver_and_tumour_voxels():
    import torch

    fp32 = torch.zeros(1, 3, 2, 2, 2)
    fp32[0, 1, 0] = 5.0  # first slab liver
    fp32[0, 2, 1, 0] = 5.0  # half the second slab tumour
    int8 = fp32.clone()
    int8[0, 2, 1, 0, 0] = -5.0  # one tumour voxel becomes background
    agree, liver, tumour = B.label_agreement(fp32, int8)
    assert agree == pytest.approx(7 / 8)
    assert liver == pytest.approx(2 * 5 / (6 + 5))
    assert tumour == pytest.approx(2 * 1 / (2 + 1))
    assert B.label_agreement(fp32[:, :2], int8[:, :2])[2] is None  # a two-class stage has no tumour


def test_quantised_network_is_int8_and_close_to_float32():
    import torch

    from LiverCTSegmentationLib.engine.networks import build_network

    if "onednn" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch has no oneDNN quantized engine")
    torch.manual_seed(0)
    net = build_network({"name": "reduced_unet3d", "in_channels": 1, "out_channels": 3, "channels": [4, 8],
                         "norm": "batch", "stem_stride": 2}).eval()
    x = [torch.randn(1, 1, 16, 16, 16) for _ in range(2)]
    engine = torch.backends.quantized.engine
    try:
        q = B.quantise(net, x, "onednn")
        with torch.inference_mode():
            ref, out = net(x[0]), q(x[0])
    finally:
        torch.backends.quantized.engine = engine
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in q.modules())
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert B.label_agreement(ref, out)[0] > 0.9  # quantisation noise, not a different network
