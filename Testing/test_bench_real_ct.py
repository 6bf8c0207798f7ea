"""bench/bench_real_ct.py: skips cleanly without ../shared, builds its full-size case with the right
geometry, and reports the CPU features its children see."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_real_ct as B  # noqa: E402


def test_absent_real_data_is_a_clean_skip(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(B, "CHAOS", tmp_path / "absent.nii.gz")
    assert B.main(["--workdir", str(tmp_path / "w")]) == 0
    assert "SKIP" in capsys.readouterr().out
    assert not (tmp_path / "w").exists()


def test_resampled_case_is_centred_on_the_source_with_air_outside(tmp_path, monkeypatch):
    import SimpleITK as sitk

    src = sitk.GetImageFromArray(np.full((10, 20, 20), 100, np.int16))
    src.SetSpacing((2.0, 2.0, 4.0))
    src.SetOrigin((-19.0, 5.0, 100.0))
    path = tmp_path / "src.nii.gz"
    sitk.WriteImage(src, str(path))
    monkeypatch.setattr(B, "CHAOS", path)
    monkeypatch.setattr(B, "RESAMPLED", {"chaos_300": ((32, 32, 60), (1.5, 1.5, 1.0)),
                                         "chaos_150": ((32, 32, 30), (1.5, 1.5, 2.0))})
    out = sitk.ReadImage(str(B.build_resampled(tmp_path, "chaos_300")))
    assert out.GetSize() == (32, 32, 60) and out.GetSpacing() == (1.5, 1.5, 1.0)
    half = sitk.ReadImage(str(B.build_resampled(tmp_path, "chaos_150")))
    assert half.GetSize() == (32, 32, 30) and half.GetSpacing() == (1.5, 1.5, 2.0)
    assert np.allclose(half.GetOrigin(), out.GetOrigin(), atol=1.0)  # one field of view, other slices
    centre = lambda im: np.array(im.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in im.GetSize()]))
    assert np.allclose(centre(out), centre(src))
    arr = sitk.GetArrayFromImage(out)
    assert arr[30, 16, 16] == 100 and arr[0, 16, 16] == -1024 and arr[30, 0, 0] == -1024


def test_features_worker_reports_what_the_child_sees():
    import os
    import subprocess

    pytest.importorskip("torch")
    env = {**os.environ, **B.AVX2_ENV, "PYTHONPATH": str(B.C.LIB_PARENT)}
    out = subprocess.run([sys.executable, B.__file__, "--features-worker"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch_capability"] == "AVX2" and got["bf16_used"] is False
    assert got["emulated"] == B.AVX2_ENV and set(got["flags"]) == set(B.FLAGS)


def test_the_default_cases_include_the_150_slice_one_and_unknown_cases_are_refused(tmp_path, monkeypatch):
    import SimpleITK as sitk

    assert B.RESAMPLED["chaos_150"] == ((512, 512, 150), (0.8, 0.8, 2.0))
    assert "chaos_150" in B.TARGETS
    path = tmp_path / "src.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.int16)), str(path))
    monkeypatch.setattr(B, "CHAOS", path)
    with pytest.raises(SystemExit, match="chaos_75"):
        B.main(["--cases", "chaos,chaos_75", "--workdir", str(tmp_path / "w")])


def test_touch_worker_writes_the_memory_it_is_asked_for():
    seconds = B.touch(16)
    assert 0.0 < seconds < 60.0


def test_prefault_precedes_every_measured_process_but_not_the_features_probe(monkeypatch):
    import argparse

    order: list = []
    monkeypatch.setattr(B, "touch", lambda mb: order.append(("touch", mb)) or 0.01)
    real_measure = B.C.measure
    monkeypatch.setattr(B.C, "measure", lambda cmd, threads: order.append(("run", cmd[-1])) or real_measure(cmd, threads))
    args = argparse.Namespace(isa="native", threads=1, prefault_mb=64)
    B.run([sys.executable, "-c", "print(1)"], args)
    B.run([sys.executable, "-c", "print(2)"], args, prefault=False)
    assert order == [("touch", 64), ("run", "print(1)"), ("run", "print(2)")]
    args.prefault_mb = 0
    order.clear()
    B.run([sys.executable, "-c", "print(3)"], args)
    assert order == [("run", "print(3)")]


def test_a_case_with_its_own_source_is_built_from_it_into_its_own_file(tmp_path, monkeypatch):
    import SimpleITK as sitk

    def write(value: int, name: str) -> Path:
        img = sitk.GetImageFromArray(np.full((8, 8, 8), value, np.int16))
        img.SetSpacing((3.0, 3.0, 3.0))
        path = tmp_path / name
        sitk.WriteImage(img, str(path))
        return path

    monkeypatch.setattr(B, "CHAOS", write(100, "chaos.nii.gz"))
    monkeypatch.setattr(B, "SOURCES", {"totalseg_300": write(250, "totalseg.nii.gz")})
    monkeypatch.setattr(B, "RESAMPLED", {"chaos_300": ((16, 16, 16), (1.5, 1.5, 1.5)),
                                         "totalseg_300": ((16, 16, 16), (1.5, 1.5, 1.5))})
    chaos, total = B.build_resampled(tmp_path, "chaos_300"), B.build_resampled(tmp_path, "totalseg_300")
    assert chaos != total and total.name.startswith("totalseg_")
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(chaos)))[8, 8, 8] == 100
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(total)))[8, 8, 8] == 250
    assert "totalseg_300" in B.TARGETS


def test_cpu_flags_names_the_benchs_flags():
    flags = B.cpu_flags()
    assert set(flags) == set(B.FLAGS) and all(isinstance(v, bool) for v in flags.values())
    if Path("/proc/cpuinfo").exists():
        assert flags["avx2"] is True  # every machine these benches run on has AVX2


def test_rerun_with_isa_only_when_asked_and_not_yet_emulated(monkeypatch):
    from types import SimpleNamespace

    for k in B.AVX2_ENV:
        monkeypatch.delenv(k, raising=False)
    assert B.rerun_with_isa(SimpleNamespace(isa="native", threads=2), B.__file__, []) is None
    assert B.emulated_env() == {}
    for k, v in B.AVX2_ENV.items():
        monkeypatch.setenv(k, v)
    assert B.rerun_with_isa(SimpleNamespace(isa="avx2", threads=2), B.__file__, []) is None  # already the re-run
    assert B.emulated_env() == B.AVX2_ENV
