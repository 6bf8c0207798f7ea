"""liverseg-train soup: one stage's weights averaged over the runs of a warm-start chain."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from liverct_training import train as T  # noqa: E402
from liverct_training.config import load_config  # noqa: E402
from liverct_training.export import export_run  # noqa: E402
from liverct_training.soup import SoupError, average_states, soup, soup_run  # noqa: E402
from test_training_loop import tiny_overrides  # noqa: E402


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny trained run and a copy whose coarse weights were moved, as the next round would."""
    tmp = tmp_path_factory.mktemp("soup")
    a = tmp / "round1"
    T.train(load_config("phantom", tiny_overrides(a, tmp / "cache") + [
        "train.stages=[coarse]", "train.epochs=1", "train.iterations_per_epoch=2",
        "output.mlflow=false", "output.plots=false"]))
    b = tmp / "round2"
    shutil.copytree(a, b)
    state = torch.load(b / "best_coarse.pt", weights_only=True)
    g = torch.Generator().manual_seed(0)
    moved = {k: (v + torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 7) for k, v in state.items()}
    torch.save(moved, b / "best_coarse.pt")
    return a, b


def _load(p: Path) -> dict:
    return torch.load(p, weights_only=True)


def test_the_soup_is_the_mean_of_the_runs_and_exports_a_bundle_the_engine_loads(tmp_path, two_runs):
    from LiverCTSegmentationLib.engine.bundle import ModelBundle, load_state_dict

    a, b = two_runs
    out = soup_run([a, b], tmp_path / "soup", stage="coarse")
    sa, sb, got = _load(a / "best_coarse.pt"), _load(b / "best_coarse.pt"), _load(out / "best_coarse.pt")
    assert set(got) == set(sb)
    for k, v in got.items():
        if v.is_floating_point():
            assert torch.allclose(v, (sa[k] + sb[k]) / 2, atol=1e-6), k
            assert not torch.allclose(v, sb[k]), k  # not simply the last run's weights
        else:
            assert torch.equal(v, sb[k]), k  # batch counters: the last run's
    record = json.loads((out / "soup.json").read_text())
    assert [s["run"] for s in record["sources"]] == [str(a), str(b)]
    import hashlib
    assert record["sources"][0]["sha256"] == hashlib.sha256((a / "best_coarse.pt").read_bytes()).hexdigest()
    assert "liverseg-train soup" in (out / "command.txt").read_text()
    bundle = export_run(out, tmp_path / "bundle", hash_data=False)
    loaded = load_state_dict(ModelBundle.load(bundle).stages["coarse"])
    assert all(torch.allclose(loaded[k].float(), got[k].float()) for k in got)


def test_weights_select_and_weigh_the_runs(tmp_path, two_runs):
    a, b = two_runs
    first = _load(soup_run([a, b], tmp_path / "w10", stage="coarse", weights=[1, 0]) / "best_coarse.pt")
    sa, sb = _load(a / "best_coarse.pt"), _load(b / "best_coarse.pt")
    assert all(torch.allclose(first[k], sa[k]) for k in sa if sa[k].is_floating_point())
    w31 = _load(soup_run([a, b], tmp_path / "w31", stage="coarse", weights=[3, 1]) / "best_coarse.pt")
    k = next(k for k in sa if sa[k].is_floating_point())
    assert torch.allclose(w31[k], 0.75 * sa[k] + 0.25 * sb[k], atol=1e-6)
    with pytest.raises(SoupError, match="weight per run"):
        soup_run([a, b], tmp_path / "bad", stage="coarse", weights=[1])


def test_different_architectures_and_missing_stages_are_refused(tmp_path, two_runs):
    a, b = two_runs
    s = _load(a / "best_coarse.pt")
    k = next(k for k in s if k.endswith("weight"))
    with pytest.raises(SoupError, match="differs"):
        average_states([s, {**s, k: torch.zeros(3)}])
    with pytest.raises(SoupError, match="best_fine.pt not found"):
        soup_run([a, b], tmp_path / "x", stage="fine")


def test_an_existing_folder_is_never_overwritten_unasked(tmp_path, two_runs):
    a, b = two_runs
    out = tmp_path / "soup"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(SoupError, match="exists"):
        soup_run([a, b], out, stage="coarse")
    assert (out / "mine.txt").read_text() == "keep"
    soup_run([a, b], out, stage="coarse", overwrite=True)
    assert (out / "soup.json").is_file() and not (out / "mine.txt").exists()


def test_leave_one_out_roots_are_souped_folder_by_folder(tmp_path, two_runs):
    a, b = two_runs
    roots = []
    for name, src in (("r1", a), ("r2", b)):
        for run in ("fold-x", "final"):
            shutil.copytree(src, tmp_path / name / run)
        roots.append(tmp_path / name)
    made = soup(roots, tmp_path / "soup", stage="coarse")
    assert sorted(p.name for p in made) == ["final", "fold-x"]
    same = _load(tmp_path / "soup" / "final" / "best_coarse.pt")
    direct = _load(soup_run([a, b], tmp_path / "direct", stage="coarse") / "best_coarse.pt")
    assert all(torch.equal(same[k], direct[k]) for k in same)
    shutil.rmtree(tmp_path / "r1" / "final")
    with pytest.raises(SoupError, match="lacks run folder"):
        soup(roots, tmp_path / "soup2", stage="coarse")
