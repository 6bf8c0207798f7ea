"""`evaluate` (full engine pipeline + metrics files) and `export` (bundle + model card)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from bundle_fixtures import make_box_bundle
from LiverCTSegmentationLib.engine import pipeline
from LiverCTSegmentationLib.engine.bundle import ModelBundle, sha256_file
from LiverCTSegmentationLib.engine.io import write_volume
from LiverCTSegmentationLib.synthetic.phantom import make_phantom
from liverct_training import evaluate as E
from liverct_training import export as X
from liverct_training import metrics as M
from liverct_training.datasets import Case, load_case


def write_phantom(folder: Path, seed: int, n_lesions: int, orientation: str = "LPS") -> Case:
    ct, lab = make_phantom(seed, shape_kji=(24, 48, 48), spacing=(7.0, 6.0, 8.0), orientation=orientation,
                           fov="full", n_lesions=n_lesions)
    img = write_volume(ct, folder / f"ph{seed}.nii.gz")
    lb = write_volume(lab, folder / f"ph{seed}_seg.nii.gz")
    return Case(f"ph{seed}", f"ph{seed}", str(img), str(lb))


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    d = tmp_path_factory.mktemp("phantoms")
    return [write_phantom(d, 11, 2, "LPS"), write_phantom(d, 12, 0, "RAS")]


def _f(x: str) -> float:
    return float(x) if x not in ("", "nan") else math.nan


def test_evaluate_outputs_match_direct_metrics(tmp_path, phantoms):
    bundle_dir = make_box_bundle(tmp_path / "bundle", liver_hu=(60.0, 200.0), tumor_hu=(-20.0, 45.0),
                                 coarse_spacing=6.0, fine_spacing=4.0)
    split = {"format_version": 1, "seed": 0, "train": [], "val": [], "test": [c.case_id for c in phantoms],
             "cases": {c.case_id: c.to_dict() for c in phantoms}}
    sp = tmp_path / "split.json"
    sp.write_text(json.dumps(split))
    out = tmp_path / "eval"
    rc = E.main_evaluate(["--bundle", str(bundle_dir), "--split", str(sp), "--subset", "test", "--out", str(out),
                          "--device", "cpu"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "eval.csv")))
    assert [(r["case_id"], r["class"]) for r in rows] == [("ph11", "liver"), ("ph11", "tumor"),
                                                          ("ph12", "liver"), ("ph12", "tumor")]
    assert set(E.CSV_COLUMNS) == set(rows[0])
    # same numbers as a direct run of the engine pipeline + metrics.py
    bundle = ModelBundle.load(bundle_dir)
    for case in phantoms:
        ct, truth = load_case(case, "liver_tumor")
        pred = pipeline.segment(ct, bundle, pipeline.SegmentOptions(device="cpu")).labelmap
        assert pred.same_grid(ct)
        direct = M.case_metrics(pred.array, truth.array, ct.spacing, {"liver": (1, 2), "tumor": (2,)})
        for r in (r for r in rows if r["case_id"] == case.case_id):
            d = direct[r["class"]]
            for col, key in (("dice", "dice"), ("iou", "iou"), ("hd95_mm", "hd95"), ("assd_mm", "assd"),
                             ("rvd", "rvd"), ("true_ml", "true_ml")):
                got, want = _f(r[col]), float(d[key])
                assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-5, abs=1e-9), (col, r)
    assert rows[1]["true_empty"] == "0" and rows[3]["true_empty"] == "1"  # ph12 has no tumour
    assert _f(rows[0]["dice"]) > 0.2  # the threshold bundle finds the liver-HU region
    metrics = json.loads((out / "metrics.json").read_text())
    liver = metrics["classes"]["liver"]
    dices = [_f(r["dice"]) for r in rows if r["class"] == "liver"]
    assert liver["dice"]["mean"] == pytest.approx(np.mean(dices), rel=1e-5)
    assert liver["dice"]["median"] == pytest.approx(np.median(dices), rel=1e-5)
    tumor = metrics["classes"]["tumor"]
    assert tumor["n_nonempty_truth"] == 1 and tumor["empty_truth"]["n_cases"] == 1
    assert tumor["lesion_detection"]["n_true"] == int(rows[1]["n_true_lesions"]) >= 1
    assert 0.0 <= liver["global_dice"] <= 1.0
    md = (out / "summary.md").read_text()
    for text in ("## liver", "## tumor", "global Dice", "Lesion detection", "EMPTY tumor truth", "| dice |"):
        assert text in md
    for m in E.METRICS:
        assert (out / f"boxplot_{m}.png").stat().st_size > 1000
    for c in phantoms:
        assert (out / "overlays" / f"{c.case_id}_compare.png").is_file()
        assert (out / "overlays" / f"{c.case_id}.png").is_file()


def test_evaluate_cases_argument_and_errors(tmp_path, phantoms):
    bundle_dir = make_box_bundle(tmp_path / "b", liver_hu=(60.0, 200.0), two_stage=False, coarse_spacing=6.0)
    c = phantoms[0]
    out = tmp_path / "e"
    assert E.main_evaluate(["--bundle", str(bundle_dir), "--cases", f"{c.image_path}:{c.label_path}",
                            "--out", str(out), "--no-overlays", "--task", "liver", "--device", "cpu"]) == 0
    rows = list(csv.DictReader(open(out / "eval.csv")))
    assert [r["class"] for r in rows] == ["liver"]
    assert not (out / "overlays").exists()
    assert E.main_evaluate(["--bundle", str(tmp_path / "missing"), "--cases", f"{c.image_path}:{c.label_path}",
                            "--out", str(out)]) == 2
    assert E.main_evaluate(["--bundle", str(bundle_dir), "--split", str(tmp_path / "nosplit.json"),
                            "--out", str(out)]) == 2


# ------------------------------------------------------------------ export
TINY = ["stages.coarse.architecture.channels=[4, 8, 16]", "stages.fine.architecture.channels=[4, 8, 16]",
        "stages.coarse.patch_size=[32, 32, 32]", "stages.fine.patch_size=[32, 32, 32]",
        "stages.coarse.spacing=[6.0, 6.0, 6.0]", "stages.fine.spacing=[4.0, 4.0, 4.0]"]  # keep CI inference fast


def make_run(run: Path, phantoms, prefix: str = "") -> dict:
    import torch

    from LiverCTSegmentationLib.engine.networks import build_network
    from liverct_training.config import load_config, save_config

    cfg = load_config("phantom", TINY + [f"output.run_dir={run}"])
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    torch.manual_seed(0)
    for s in ("coarse", "fine"):
        sd = build_network(cfg["stages"][s]["architecture"]).state_dict()
        torch.save({prefix + k: v for k, v in sd.items()}, run / f"best_{s}.pt")
    split = {"format_version": 1, "seed": 1000, "level": "patient", "train": [phantoms[0].case_id], "val": [],
             "test": [phantoms[1].case_id], "cases": {c.case_id: c.to_dict() for c in phantoms}}
    (run / "split.json").write_text(json.dumps(split))
    return cfg


def test_export_bundle_loads_and_segments(tmp_path, phantoms):
    run = tmp_path / "run"
    cfg = make_run(run, phantoms, prefix="module.")  # DDP-style keys are accepted
    out = tmp_path / "bundle"
    assert X.main_export(["--run", str(run), "--out", str(out), "--version", "1.2.3"]) == 0
    b = ModelBundle.load(out)
    assert b.version == "1.2.3" and b.demo is True  # phantom data -> demo
    assert set(b.stages) == {"coarse", "fine"}
    desc = json.loads((out / "model.json").read_text())
    assert [l["name"] for l in desc["labels"]] == ["Liver", "Liver tumor"]
    assert desc["labels"][0]["terminology"]["type"] == ["SCT", "10200004", "Liver"]
    assert desc["stages"]["coarse"]["spacing"] == cfg["stages"]["coarse"]["spacing"]
    assert desc["stages"]["fine"]["margin_mm"] == cfg["stages"]["fine"]["margin_mm"]
    assert desc["stages"]["fine"]["architecture"]["channels"] == [4, 8, 16]
    assert desc["training"]["task"] == "liver_tumor" and desc["training"]["seed"] == cfg["train"]["seed"]
    # the exported model segments a phantom on its exact grid
    ct, _ = load_case(phantoms[0])
    res = pipeline.segment(ct, b, pipeline.SegmentOptions(device="cpu"))
    assert res.labelmap.same_grid(ct) and res.labelmap.array.dtype == np.uint8
    card = (out / "MODEL_CARD.md").read_text()
    for text in ("research only", "not for clinical diagnosis", "DEMO MODEL", "Known limitations",
                 "liverseg-train train", "seed: 0", "Not evaluated yet", "Apache-2.0"):
        assert text.lower() in card.lower(), text
    for s in ("coarse", "fine"):
        assert sha256_file(out / f"{s}.safetensors") in card
    assert sha256_file(Path(phantoms[0].image_path)) in card  # data checksums
    # refuses to overwrite without --overwrite
    assert X.main_export(["--run", str(run), "--out", str(out)]) == 2


def test_export_with_metrics_after_evaluate(tmp_path, phantoms):
    run = tmp_path / "run"
    make_run(run, phantoms)
    out = tmp_path / "bundle"
    assert X.main_export(["--run", str(run), "--out", str(out), "--no-data-checksums"]) == 0
    ev = tmp_path / "eval"
    assert E.main_evaluate(["--bundle", str(out), "--split", str(run / "split.json"), "--subset", "test",
                            "--out", str(ev), "--no-overlays", "--device", "cpu"]) == 0
    assert X.main_export(["--run", str(run), "--out", str(out), "--metrics", str(ev), "--overwrite",
                          "--no-demo", "--name", "tiny-x"]) == 0
    desc = json.loads((out / "model.json").read_text())
    assert desc["name"] == "tiny-x" and desc["demo"] is False
    ev_metrics = json.loads((ev / "metrics.json").read_text())
    want = ev_metrics["classes"]["liver"]["dice"]["mean"]
    got = desc["metrics"]["liver"]["dice_mean"]
    assert (got is None and math.isnan(want)) or got == pytest.approx(want, abs=1e-5)
    card = (out / "MODEL_CARD.md").read_text()
    assert "| liver |" in card and "Not evaluated yet" not in card and "DEMO MODEL" not in card
    ModelBundle.load(out)


def test_export_refuses_unsafe_or_missing_checkpoints(tmp_path, phantoms):
    import torch

    run = tmp_path / "run"
    make_run(run, phantoms)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"weight": Evil()}, run / "best_coarse.pt")
    assert X.main_export(["--run", str(run), "--out", str(tmp_path / "b1")]) == 2
    assert not marker.exists()
    (run / "best_coarse.pt").unlink()
    assert X.main_export(["--run", str(run), "--out", str(tmp_path / "b2")]) == 2
    assert X.main_export(["--run", str(tmp_path / "nope"), "--out", str(tmp_path / "b3")]) == 2


def test_export_coarse_only_and_mismatched_weights(tmp_path, phantoms):
    import torch

    run = tmp_path / "run"
    make_run(run, phantoms)
    (run / "best_fine.pt").unlink()
    out = X.export_run(run, tmp_path / "single", hash_data=False)
    assert set(ModelBundle.load(out).stages) == {"coarse"}
    # weights that do not fit the configured architecture -> clear error, nothing written
    sd = torch.load(run / "best_coarse.pt", weights_only=True)
    sd[next(iter(sd))] = torch.zeros(1)
    torch.save(sd, run / "best_coarse.pt")
    assert X.main_export(["--run", str(run), "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad" / "model.json").exists()


def test_lung_tumour_export_marks_the_bundle_lesion_only():
    from liverct_training.config import load_config
    from LiverCTSegmentationLib.engine.postprocess import lesions_only

    lung = X.build_description(load_config("msd_lung_tumor"), ["coarse"], "lung", "0.1.0", demo=False)
    assert lung["postprocess"]["lesions_only"] is True and lesions_only(lung)
    assert [l["name"] for l in lung["labels"]] == ["Lung tumor"]
    liver = X.build_description(load_config("phantom"), ["coarse", "fine"], "liver", "0.1.0", demo=True)
    assert "lesions_only" not in liver["postprocess"] and not lesions_only(liver)
