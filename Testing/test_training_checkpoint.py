"""last_<stage>.pt is loaded with weights_only=True: planted, foreign and damaged files get a
CheckpointError naming the file and the fix; a real checkpoint round-trips and resumes bit-exactly."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from liverct_training import cli  # noqa: E402
from liverct_training import train as T  # noqa: E402
from liverct_training.config import load_config  # noqa: E402
from test_training_loop import tiny_overrides  # noqa: E402


class _Planted:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _ov(root: Path, cache: Path | None = None) -> list[str]:
    return tiny_overrides(root / "run", cache or root / "cache") + [
        "train.stages=[coarse]", "train.iterations_per_epoch=2", "output.mlflow=false", "output.plots=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 2-epoch coarse run (the real checkpoint the tests tamper with copies of)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    T.train(load_config("phantom", _ov(tmp)))
    return tmp


def _resume_with(tmp_path: Path, trained: Path, content: bytes, capsys) -> str:
    """Copy the trained run, replace last_coarse.pt, resume through the CLI; returns stderr."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last_coarse.pt").write_bytes(content)
    capsys.readouterr()
    assert cli.main(["train", "phantom", *_ov(tmp_path, trained / "cache"), "--resume"]) == 1
    err = capsys.readouterr().err
    assert "last_coarse.pt" in err and "--resume" in err and "Traceback" not in err
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err
    return err


def _torch_bytes(obj, tmp_path: Path) -> bytes:
    p = tmp_path / "obj.pt"
    torch.save(obj, p)
    return p.read_bytes()


def test_planted_pickle_is_refused_without_running_code(tmp_path, trained, capsys):
    marker = tmp_path / "PWNED"
    # Shaped like a finished stage's checkpoint, so the old loader ran the code and then skipped the stage.
    planted = {"format": "liverct-checkpoint", "version": 1, "stage": "coarse", "epoch": 1, "done": True,
               "stopped_early": True, "summary": {"stage": "coarse"}, "rng": _Planted(marker)}
    err = _resume_with(tmp_path, trained, _torch_bytes(planted, tmp_path), capsys)
    assert not marker.exists(), "loading the checkpoint executed code"
    assert "refused" in err and "could run code" in err


def test_foreign_torch_file_is_named_not_a_keyerror(tmp_path, trained, capsys):
    err = _resume_with(tmp_path, trained, _torch_bytes({"weights": torch.ones(2), "epoch": 3}, tmp_path), capsys)
    assert "not a liverseg-train training checkpoint" in err and "KeyError" not in err


def test_other_format_version_is_incompatible(tmp_path, trained, capsys):
    real = torch.load(trained / "run" / "last_coarse.pt", weights_only=True)
    real["version"] = 99
    err = _resume_with(tmp_path, trained, _torch_bytes(real, tmp_path), capsys)
    assert "version 99" in err


def test_truncated_checkpoint_is_damaged(tmp_path, trained, capsys):
    data = (trained / "run" / "last_coarse.pt").read_bytes()
    err = _resume_with(tmp_path, trained, data[: len(data) // 2], capsys)
    assert "damaged" in err


def test_empty_and_text_files_are_damaged(tmp_path):
    from liverct_training.checkpoint import CheckpointError, load_checkpoint

    for name, content in (("empty.pt", b""), ("text.pt", b"hello\n"), ("noise.pt", os.urandom(2000))):
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{name}.*damaged"):
            load_checkpoint(p, "coarse")


def test_checkpoint_of_another_stage_is_refused(tmp_path, trained):
    from liverct_training.checkpoint import CheckpointError, load_checkpoint

    with pytest.raises(CheckpointError, match="'coarse' stage.*not 'fine'"):
        load_checkpoint(trained / "run" / "last_coarse.pt", "fine")


def test_real_checkpoint_round_trips_under_weights_only(trained):
    from liverct_training.checkpoint import FORMAT, VERSION, load_checkpoint

    path = trained / "run" / "last_coarse.pt"
    raw = torch.load(path, map_location="cpu", weights_only=True)  # must not raise
    assert raw["format"] == FORMAT and raw["version"] == VERSION
    ckpt = load_checkpoint(path, "coarse")
    assert ckpt["epoch"] == 1 and ckpt["done"] and ckpt["stage"] == "coarse"
    assert {"state", "param_groups"} <= set(ckpt["optimizer"]) and ckpt["scheduler"]["last_epoch"] == 4
    assert set(ckpt["rng"]) >= {"python", "numpy", "torch"}


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    """Stop mid-epoch 2, resume: weights, optimiser state and history equal one straight run."""
    straight, broken = tmp_path / "a", tmp_path / "b"
    cache = tmp_path / "cache"
    T.train(load_config("phantom", _ov(straight, cache)))
    real_step, calls = T.train_step, []

    def crash_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # iterations_per_epoch=2: the first step of epoch 2
            raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(T, "train_step", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        T.train(load_config("phantom", _ov(broken, cache)))
    monkeypatch.setattr(T, "train_step", real_step)
    T.train(load_config("phantom", _ov(broken, cache)), resume=True)

    a = torch.load(straight / "run" / "last_coarse.pt", weights_only=True)
    b = torch.load(broken / "run" / "last_coarse.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i][n], sb[i][n]) for i in sa for n in sa[i])
    assert a["scheduler"] == b["scheduler"] and a["best"] == b["best"]
    strip = [{k: v for k, v in h.items() if k != "sec_per_iter"} for h in a["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "sec_per_iter"} for h in b["history"]]
    hist = json.loads((broken / "run" / "history_coarse.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]


def test_export_refuses_a_planted_state_dict_without_torch_advice(tmp_path):
    from liverct_training.export import ExportError, load_state_dict

    marker, path = tmp_path / "PWNED", tmp_path / "best_coarse.pt"
    torch.save({"conv.weight": torch.ones(1), "x": _Planted(marker)}, path)
    with pytest.raises(ExportError, match="best_coarse.pt was refused") as info:
        load_state_dict(path)
    assert not marker.exists() and "weights_only" not in str(info.value)


def test_tagged_checkpoint_with_missing_entries_is_damaged(tmp_path):
    from liverct_training.checkpoint import FORMAT, VERSION, CheckpointError, load_checkpoint

    path = tmp_path / "last_coarse.pt"
    torch.save({"format": FORMAT, "version": VERSION, "stage": "coarse", "epoch": 0}, path)
    with pytest.raises(CheckpointError, match="damaged: entries model, optimizer.* missing"):
        load_checkpoint(path, "coarse")


def test_checkpoint_of_another_network_does_not_fit(tmp_path, trained, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last_coarse.pt").write_bytes((trained / "run" / "last_coarse.pt").read_bytes())
    argv = ["train", "phantom", *_ov(tmp_path, trained / "cache"), "train.epochs=3",
            "stages.coarse.architecture.channels=[4,8,32]", "--resume"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "last_coarse.pt does not fit" in err and "without --resume" in err and "Traceback" not in err
