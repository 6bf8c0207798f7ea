"""The default model's recipe (training/recipe_liverct.py) is a chain of valid configs of the preset and soups."""
from __future__ import annotations

from pathlib import Path

import pytest

from liverct_training import recipe_liverct as R
from liverct_training.config import load_config


@pytest.mark.parametrize("round_no", sorted(R.ROUNDS))
def test_every_run_of_every_round_is_a_valid_config(tmp_path, round_no):
    for name, held in R.RUNS:
        cfg = load_config(R.PRESET, R.run_overrides(round_no, name, held, tmp_path / "runs", tmp_path / "cache"))
        assert cfg["data"]["split"]["test"] == ([held] if held else [])
        fine = cfg["stages"]["fine"]["train"]
        if round_no == 1:
            assert cfg["train"].get("stages") in (None, ["coarse", "fine"]) and "init_weights" not in fine
            assert "thorax" not in cfg["data"]["synthetic"]
        else:
            assert cfg["train"]["stages"] == ["fine"]
            # each round starts from the same run's bundle of an earlier step: a fold never meets its held-out CT
            start = R.start_step(round_no)
            assert fine["init_weights"] == str(tmp_path / "runs" / start / name / "bundle")
            assert R.ORDER.index(start) < R.ORDER.index(f"round{round_no}")


def test_the_rounds_change_what_the_card_says_they_change(tmp_path):
    cfg = {r: load_config(R.PRESET, R.run_overrides(r, "final", None, tmp_path, tmp_path / "c")) for r in R.ROUNDS}
    fine = {r: c["stages"]["fine"]["train"] for r, c in cfg.items()}
    assert "shapes" not in fine[1].get("lesions", {}) and fine[2]["lesions"]["shapes"].endswith("anatomy")
    assert [r for r in R.ROUNDS if "thorax" in cfg[r]["data"]["synthetic"]] == [3, 4, 5, 6, 7, 8, 9]
    assert cfg[3]["data"]["synthetic"]["thorax"] == {"prob": 0.75, "cap_mm": [40, 90]}
    assert fine[3]["class_weights"] == [1.0, 1.0, 4.0] and fine[5]["class_weights"] == [1.0, 1.0, 3.0]
    assert cfg[4]["train"]["patch_size"] == [48, 64, 64] and cfg[4]["train"]["batch_size"] == 4
    assert cfg[5]["train"]["patch_size"] == [64, 96, 96] and cfg[5]["train"]["batch_size"] == 2
    assert cfg[8]["train"]["patch_size"] == [48, 64, 64] and R.start_step(8) == "soup4567"
    # round 9 is round 8 with another seed, from the same start: only the seed differs
    assert cfg[9]["train"]["seed"] == 1 and cfg[8]["train"]["seed"] == 0 and R.start_step(9) == R.start_step(8)
    assert {k: v for k, v in cfg[9]["train"].items() if k != "seed"} == {k: v for k, v in cfg[8]["train"].items()
                                                                          if k != "seed"}


def test_print_lists_four_runs_per_round_and_the_soups(tmp_path, capsys):
    assert R.main(["--run-dir", str(tmp_path / "r"), "--print", "--from", "round4", "--until", "round6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    train = [ln for ln in lines if f"liverseg-train train {R.PRESET}" in ln]
    assert len(train) == 12 and sum("data.split.test=[lits117]" in ln for ln in train) == 3
    assert [ln.split(":")[0] for ln in lines if "liverseg-train soup" in ln] == ["soup45"]
    assert f"{tmp_path / 'r' / 'round4'} {tmp_path / 'r' / 'round5'} --out {tmp_path / 'r' / 'soup45'}" in lines[8]


def test_every_version_is_a_step_and_soups_average_earlier_steps():
    assert set(R.VERSIONS.values()) <= set(R.ORDER)
    assert R.VERSIONS["1.0.0"] == "round5"
    for step, sources in R.SOUPS.items():
        assert len(sources) >= 2 and all(R.ORDER.index(s) < R.ORDER.index(step) for s in sources)
    assert [s for s in R.ORDER if s.startswith("round")] == [f"round{r}" for r in sorted(R.ROUNDS)]
    with pytest.raises(SystemExit, match="unknown step"):
        R.steps_until("round99")


def test_each_run_gets_its_own_warm_start(tmp_path, monkeypatch):
    """The replay trains through loo.train_runs; its per-run overrides reach each run's command."""
    from liverct_training import loo

    class Done:
        returncode = 0

        def poll(self):
            return 0

    monkeypatch.setattr(loo.subprocess, "Popen", lambda *a, **k: Done())
    monkeypatch.setattr(loo.time, "sleep", lambda s: None)
    runs = [(n, tmp_path / "round2" / n, h) for n, h in R.RUNS]
    codes = loo.train_runs(R.PRESET, R.ROUNDS[2][1], runs, tmp_path / "c", 2,
                           per_run={n: R._extra(2, n, tmp_path, tmp_path / "c") for n, _ in R.RUNS}, log=lambda m: None)
    assert codes == {n: 0 for n, _ in R.RUNS}
    for name, own, _ in runs:
        cmd = (own / "command.txt").read_text()
        assert f"stages.fine.train.init_weights={tmp_path / 'round1' / name / 'bundle'}" in cmd
        assert cmd.count("init_weights=") == 1
