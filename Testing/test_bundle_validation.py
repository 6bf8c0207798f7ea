"""A bundle is judged once, before any case runs, and resource failures say what to do.

- model.json values that cannot work (absurd patch sizes, spacings, class counts, channels),
  weights that do not fit the architecture, weights holding Python code, and a window
  that cannot fit this machine's memory are refused at load with a specific message;
- the CLI maps those to exit code 2 before creating any case folder;
- a CPU allocator failure anywhere in a segmentation is a ResourceError saying what to do;
- ``--model NAME`` next to a folder called NAME (without model.json) names the ambiguity.
"""
from __future__ import annotations

import json
import pickle
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle_fixtures import make_box_bundle, make_tiny_bundle
from LiverCTSegmentationLib import models
from LiverCTSegmentationLib.engine import bundle as bundle_mod
from LiverCTSegmentationLib.engine.bundle import ModelBundle, sha256_file
from LiverCTSegmentationLib.engine.errors import BundleError, ResourceError
from LiverCTSegmentationLib.engine.pipeline import SegmentOptions, segment
from LiverCTSegmentationLib.engine.volume import Volume

CPU_OOM = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
           "you tried to allocate 123 bytes. Error code 12 (Cannot allocate memory)")


def _edit(folder: Path, fn) -> Path:
    d = json.loads((folder / "model.json").read_text())
    fn(d)
    (folder / "model.json").write_text(json.dumps(d))
    return folder


def _liver_box() -> Volume:
    vol = Volume(np.full((30, 40, 44), -100, np.int16), (2.0, 2.0, 3.0))
    vol.array[5:25, 8:30, 6:36] = 120
    return vol


# ------------------------------------------------------------ out of memory
class _Raises(torch.nn.Module):
    def __init__(self, exc: BaseException):
        super().__init__()
        self.exc = exc

    def forward(self, x):
        raise self.exc


@pytest.fixture
def box(tmp_path) -> ModelBundle:
    return ModelBundle.load(make_box_bundle(tmp_path / "box"))


def _net_raising(monkeypatch, exc: BaseException) -> None:
    monkeypatch.setattr(ModelBundle, "network", lambda self, stage, device="cpu": _Raises(exc))


def test_cpu_allocator_failure_in_the_network_is_a_resource_error(box, monkeypatch):
    _net_raising(monkeypatch, RuntimeError(CPU_OOM))
    with pytest.raises(ResourceError) as ei:
        segment(_liver_box(), box, SegmentOptions(device="cpu"))
    msg = str(ei.value)
    assert "ran out of memory" in msg and "coarse" in msg
    assert "close other programs" in msg.lower() and "threads" in msg
    assert "DefaultCPUAllocator" not in msg and "alloc_cpu.cpp" not in msg
    _net_raising(monkeypatch, RuntimeError("shape mismatch in conv"))  # any other error stays a bug
    with pytest.raises(RuntimeError, match="shape mismatch") as ei:
        segment(_liver_box(), box, SegmentOptions(device="cpu"))
    assert not isinstance(ei.value, ResourceError)


def test_memory_error_after_the_network_is_a_resource_error(box, monkeypatch):
    from LiverCTSegmentationLib.engine import postprocess

    def no_memory(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(postprocess, "postprocess", no_memory)
    with pytest.raises(ResourceError, match="ran out of memory"):
        segment(_liver_box(), box, SegmentOptions(device="cpu"))


# ---------------------------------------------------------- pickled code
class _Evil:
    """Unpickling this creates a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _plant_pickle(folder: Path, marker: Path) -> Path:
    with open(folder / "coarse.pt", "wb") as fh:
        pickle.dump({"head.weight": _Evil(str(marker))}, fh)
    return _edit(folder, lambda d: d["stages"]["coarse"].update(
        weights="coarse.pt", sha256=sha256_file(folder / "coarse.pt")))


@pytest.mark.parametrize("when", ["load", "network"])
def test_pickled_code_is_refused_without_running_and_without_torch_advice(tmp_path, when):
    marker = tmp_path / "pwned"
    folder = _plant_pickle(make_box_bundle(tmp_path / "b", two_stage=False), marker)
    with pytest.raises(BundleError) as ei:
        if when == "load":
            ModelBundle.load(folder, check_weights=True)
        else:
            ModelBundle.load(folder).network("coarse")
    msg = str(ei.value)
    assert not marker.exists()
    assert "refused without running" in msg and "coarse.pt" in msg and "trusted source" in msg
    assert "weights_only" not in msg and "trusted source." in msg and "Re-running" not in msg
    assert ei.value.__cause__ is None and ei.value.__suppress_context__  # no torch advice in tracebacks


# ------------------------------------------------------ model.json values
@pytest.mark.parametrize("edit,match", [
    (lambda d: d["stages"]["coarse"].update(spacing=[3.0, 3.0, 1000.0]), "spacing"),
    (lambda d: d["stages"]["coarse"].update(spacing=[3.0, 3.0, 0.001]), "spacing"),
    (lambda d: d["stages"]["coarse"]["architecture"].update(in_channels=3), "one input channel"),
    (lambda d: d["stages"]["coarse"]["architecture"].update(channels=[4, 0, 16]), "channels"),
    (lambda d: d["stages"]["coarse"]["architecture"].update(channels=[4, 8, 100000]), "channels"),
    (lambda d: d["stages"]["fine"].update(class_to_label=[1, 1, 2]), "background"),
    (lambda d: (d["stages"]["coarse"]["architecture"].update(out_channels=1),
                d["stages"]["coarse"].update(class_to_label=[1])), "at least 2"),
])
def test_unworkable_values_are_refused(tmp_path, edit, match):
    folder = _edit(make_tiny_bundle(tmp_path / "b"), edit)
    with pytest.raises(BundleError, match=match):
        ModelBundle.load(folder)


def test_huge_patch_is_unusable_not_a_speed_problem(tmp_path):
    folder = _edit(make_tiny_bundle(tmp_path / "b"),
                   lambda d: d["stages"]["coarse"].update(patch_size=[4096, 4096, 4096]))
    with pytest.raises(BundleError) as ei:
        ModelBundle.load(folder)
    msg = str(ei.value)
    assert "patch size 4096x4096x4096" in msg and "GB per window" in msg and "fix model.json" in msg
    assert "--fast" not in msg


_Mem = namedtuple("_Mem", "available total")


def test_window_too_big_for_free_memory_says_close_programs(tmp_path, monkeypatch):
    import psutil

    folder = make_tiny_bundle(tmp_path / "b")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: _Mem(1 << 20, 64 << 30))
    with pytest.raises(ResourceError, match="(?i)close other programs"):
        ModelBundle.load(folder)


def test_window_too_big_for_this_machine_is_unusable(tmp_path, monkeypatch):
    import psutil

    folder = make_tiny_bundle(tmp_path / "b")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: _Mem(1 << 20, 2 << 20))
    with pytest.raises(BundleError, match="unusable on this machine.*fix model.json"):
        ModelBundle.load(folder)


def test_window_estimate_grows_with_the_patch_and_the_network():
    from LiverCTSegmentationLib.engine.networks import activation_bytes_per_voxel

    small = {"name": "reduced_unet3d", "out_channels": 2, "channels": [4, 8, 16]}
    wide = dict(small, channels=[32, 64, 128])
    assert 0 < activation_bytes_per_voxel(small) < activation_bytes_per_voxel(wide)
    assert activation_bytes_per_voxel({"name": "threshold_net", "out_channels": 2}) > 0


def test_window_estimate_stays_below_a_measured_peak():
    """A refusal must never be a false alarm: the estimate stays below what a real pass was
    measured to use (inference.py: [8, 16, 32, 64] stem-2 network, float32 128^3, +442 MB)."""
    from LiverCTSegmentationLib.engine.networks import activation_bytes_per_voxel

    arch = {"name": "reduced_unet3d", "out_channels": 3, "channels": [8, 16, 32, 64], "stem_stride": 2}
    estimate = activation_bytes_per_voxel(arch) * 128 ** 3
    assert 150e6 < estimate <= 442e6


# ------------------------------------------------ weights vs architecture
def test_weights_not_matching_the_architecture_are_refused_at_load_naming_the_key(tmp_path):
    folder = _edit(make_tiny_bundle(tmp_path / "b"),
                   lambda d: d["stages"]["fine"]["architecture"].update(channels=[4, 8, 32]))
    ModelBundle.load(folder)  # the cheap load still works (resume without torch)
    with pytest.raises(BundleError) as ei:
        ModelBundle.load(folder, check_weights=True)
    msg = str(ei.value)
    assert "stage 'fine'" in msg and "'downs.1.1.conv1.weight'" in msg and "shape" in msg


def test_missing_weight_key_is_named(tmp_path):
    folder = _edit(make_tiny_bundle(tmp_path / "b"),
                   lambda d: d["stages"]["coarse"]["architecture"].update(channels=[4, 8, 16, 32]))
    with pytest.raises(BundleError, match=r"stage 'coarse'.*'downs\.2\.0\.weight'.*missing"):
        ModelBundle.load(folder, check_weights=True)


def test_check_weights_passes_a_good_bundle_and_builds_nothing_real(tmp_path):
    mb = ModelBundle.load(make_tiny_bundle(tmp_path / "b"), check_weights=True)
    assert mb.stage_names == ["coarse", "fine"] and not mb._cache


# -------------------------------------------------------------------- CLI
def test_cli_refuses_an_unusable_bundle_before_any_case(tmp_path, capsys):
    from LiverCTSegmentationLib.batch import cli

    if not cli.SAMPLE_CT.is_file():
        pytest.skip("bundled sample CT missing")
    folder = _edit(make_tiny_bundle(tmp_path / "b"),
                   lambda d: d["stages"]["coarse"].update(patch_size=[4096, 4096, 4096]))
    out = tmp_path / "out"
    rc = cli.main([str(cli.SAMPLE_CT), "-o", str(out), "--model", str(folder), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "4096x4096x4096" in err and "--fast" not in err
    assert not out.exists() or not any(out.iterdir())


def test_cli_refuses_weights_not_matching_the_architecture_before_any_case(tmp_path, capsys):
    """Checked once, when the first case needs the network: rc 2, no case folder, no report row."""
    from LiverCTSegmentationLib.batch import cli

    if not cli.SAMPLE_CT.is_file():
        pytest.skip("bundled sample CT missing")
    folder = _edit(make_tiny_bundle(tmp_path / "b"),
                   lambda d: d["stages"]["fine"]["architecture"].update(channels=[4, 8, 32]))
    out = tmp_path / "out"
    rc = cli.main([str(cli.SAMPLE_CT), str(cli.SAMPLE_CT.parent), "-o", str(out), "--model", str(folder),
                   "--quiet", "--no-overlay"])
    err = capsys.readouterr().err
    assert rc == 2 and "'downs.1.1.conv1.weight'" in err, err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []


# ---------------------------------------------------------- --model NAME
def test_name_shadowed_by_a_folder_without_model_json_is_ambiguous(tmp_path, monkeypatch):
    name = models.default_model_name()
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).mkdir()
    with pytest.raises(BundleError) as ei:
        models.resolve_model_arg(name)
    msg = str(ei.value)
    assert "ambiguous" in msg and f"./{name}" in msg and "registered" in msg
    assert "model.json is missing" not in msg
    with pytest.raises(BundleError, match="no model.json"):
        models.resolve_model_arg(f"./{name}")  # explicitly the folder


def test_folder_with_model_json_wins_and_default_ignores_the_cwd(tmp_path, monkeypatch):
    name = models.default_model_name()
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).mkdir()
    # no --model: the registered default, never a same-named folder in the working directory
    assert models.resolve_model_arg(None) == models.MODELS_RESOURCE_DIR / name
    make_tiny_bundle(tmp_path / name)
    assert Path(models.resolve_model_arg(name)).resolve() == (tmp_path / name).resolve()


def test_cli_names_the_ambiguity(tmp_path, monkeypatch, capsys):
    from LiverCTSegmentationLib.batch import cli

    name = models.default_model_name()
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).mkdir()
    (tmp_path / "in").mkdir()
    rc = cli.main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", name, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "ambiguous" in err and "model.json is missing" not in err


def test_gpu_out_of_memory_is_a_resource_error_in_and_outside_the_network_pass(box, monkeypatch):
    gpu_oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    _net_raising(monkeypatch, gpu_oom)  # in the forward pass: run_stage's own message
    with pytest.raises(ResourceError, match="GPU ran out of memory in the coarse pass"):
        segment(_liver_box(), box, SegmentOptions(device="cpu"))

    def no_room(self, stage, device="cpu"):  # e.g. moving the weights to a full GPU
        raise gpu_oom

    monkeypatch.setattr(ModelBundle, "network", no_room)
    with pytest.raises(ResourceError, match="GPU ran out of memory during the coarse step.*device 'cpu'"):
        segment(_liver_box(), box, SegmentOptions(device="cpu"))
