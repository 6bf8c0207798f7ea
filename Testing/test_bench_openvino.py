"""bench/bench_openvino.py: it times the windows the pipeline really runs, named by stage, and skips
cleanly without OpenVINO (not a project dependency)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import bench_openvino as B  # noqa: E402

SAMPLE_CT = ROOT / "LiverCTSegmentation" / "Resources" / "Samples" / "phantom_ct.nii.gz"


def test_without_openvino_it_says_skip(block_imports, capsys):
    block_imports("openvino")
    assert B.main(["--isa", "native"]) == 0
    assert "SKIP: openvino is not installed" in capsys.readouterr().out


def test_captured_windows_are_the_executors_named_by_stage_and_the_executor_is_restored():
    import torch

    from LiverCTSegmentationLib.engine import fast_unet

    if not SAMPLE_CT.is_file():
        pytest.skip(f"bundled sample CT missing: {SAMPLE_CT}")
    call = fast_unet.FastUNet.__call__
    threads = torch.get_num_threads()
    try:
        windows = B.capture_windows(SAMPLE_CT, threads=1)
    finally:
        torch.set_num_threads(threads)  # the pipeline set one thread; later tests keep theirs
    assert fast_unet.FastUNet.__call__ is call
    stages = [s for s, _x, _net in windows]
    assert stages[0] == "coarse" and "fine" in stages and set(stages) == {"coarse", "fine"}
    for stage, x, net in windows:
        assert x.ndim == 5 and x.shape[:2] == (1, 1)
        assert net.training is False and type(net).__name__ == "UNet"
