"""train.init_weights warm-starts a stage from a verified bundle; train.patch_size trains on a
smaller patch while the exported bundle keeps the stage's inference window."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from liverct_training import train as T  # noqa: E402
from liverct_training.config import ConfigError, load_config  # noqa: E402
from liverct_training.export import export_run  # noqa: E402
from test_training_loop import tiny_overrides  # noqa: E402


def _ov(root: Path, cache: Path, *extra: str) -> list[str]:
    return tiny_overrides(root, cache) + ["train.stages=[coarse]", "train.epochs=1", "train.iterations_per_epoch=2",
                                          "output.mlflow=false", "output.plots=false", *extra]


@pytest.fixture(scope="module")
def source_bundle(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("warm")
    T.train(load_config("phantom", _ov(tmp / "run", tmp / "cache")))
    return export_run(tmp / "run", tmp / "bundle", hash_data=False)


def _state(run: Path, name: str) -> dict:
    return torch.load(run / name, weights_only=True)


def test_zero_iteration_warm_start_equals_the_source_weights(tmp_path, source_bundle):
    from LiverCTSegmentationLib.engine.bundle import ModelBundle, load_state_dict

    # lr=0: the trained weights stay what was loaded, so they must equal the bundle's exactly.
    run = tmp_path / "run"
    out = T.train(load_config("phantom", _ov(run, source_bundle.parent / "cache", "train.lr=0",
                                             f"train.init_weights={source_bundle}")))
    src = load_state_dict(ModelBundle.load(source_bundle).stages["coarse"])
    got = _state(run, "best_coarse.pt")
    for k, v in src.items():
        if k.endswith("num_batches_tracked") or "running_" in k:
            continue  # batch-norm statistics move in train mode even at lr=0
        assert torch.equal(got[k], v), k
    assert out["coarse"]["init_weights_sha256"] == ModelBundle.load(source_bundle).stages["coarse"].sha256


def test_without_init_weights_the_start_differs(tmp_path, source_bundle):
    from LiverCTSegmentationLib.engine.bundle import ModelBundle, load_state_dict

    run = tmp_path / "run"
    T.train(load_config("phantom", _ov(run, source_bundle.parent / "cache", "train.lr=0", "train.seed=5")))
    src = load_state_dict(ModelBundle.load(source_bundle).stages["coarse"])
    got = _state(run, "best_coarse.pt")
    assert any(not torch.equal(got[k], v) for k, v in src.items() if "weight" in k)


def test_init_weights_with_another_architecture_is_refused(tmp_path, source_bundle):
    cfg = load_config("phantom", _ov(tmp_path / "run", source_bundle.parent / "cache",
                                     "stages.coarse.architecture.channels=[8,16,32]",
                                     f"train.init_weights={source_bundle}"))
    with pytest.raises(ConfigError, match="architectures must be equal"):
        T.train(cfg)


def test_tampered_init_weights_are_refused(tmp_path, source_bundle):
    import shutil

    from LiverCTSegmentationLib.engine.bundle import BundleError

    bad = tmp_path / "bad"
    shutil.copytree(source_bundle, bad)
    w = bad / "coarse.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    cfg = load_config("phantom", _ov(tmp_path / "run", source_bundle.parent / "cache", f"train.init_weights={bad}"))
    with pytest.raises(BundleError, match="tampered"):
        T.train(cfg)


def test_training_patch_is_separate_from_the_inference_window(tmp_path, source_bundle):
    run = tmp_path / "run"
    T.train(load_config("phantom", _ov(run, source_bundle.parent / "cache", "train.patch_size=[16,16,32]")))
    bundle = export_run(run, tmp_path / "bundle", hash_data=False)
    desc = json.loads((bundle / "model.json").read_text())
    assert desc["stages"]["coarse"]["patch_size"] == [32, 32, 32]
    with pytest.raises(ConfigError, match="multiples of"):
        T.train(load_config("phantom", _ov(tmp_path / "run2", source_bundle.parent / "cache",
                                           "train.patch_size=[10,16,32]")))


def test_warm_start_into_a_wider_tail_keeps_the_trained_weights(tmp_path, source_bundle):
    from LiverCTSegmentationLib.engine.bundle import ModelBundle, load_state_dict

    # lr=0: the widened stage starts from the bundle's weights (the old block of every tail tensor).
    run = tmp_path / "run"
    T.train(load_config("phantom", _ov(run, source_bundle.parent / "cache", "train.lr=0",
                                       "stages.coarse.architecture.refine_channels=7",
                                       f"train.init_weights={source_bundle}")))
    src = load_state_dict(ModelBundle.load(source_bundle).stages["coarse"])
    got = _state(run, "best_coarse.pt")
    assert got["outc.weight"].shape[1] == 7
    for k, v in src.items():
        if k.endswith("num_batches_tracked") or "running_" in k:
            continue
        assert torch.equal(got[k][tuple(slice(0, n) for n in v.shape)], v), k
