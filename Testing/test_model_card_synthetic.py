"""The model card names the synthetic training data (sources, licence, checksums) and each stage's
own schedule (epochs, training patch, warm start), which the global train line cannot show."""
from __future__ import annotations

import hashlib

from liverct_training.export import SYNTHETIC_LICENCE, stage_training_lines, synthetic_lines


def test_synthetic_lines_list_every_map_with_its_checksum_and_the_licence(tmp_path):
    for name, data in (("ircad_p02", b"a"), ("ircad_p03", b"bb")):
        (tmp_path / f"{name}_anatomy.nii.gz").write_bytes(data)
    lines = synthetic_lines({"synthetic": {"root": str(tmp_path), "variants": 2, "fraction": 0.5}})
    text = "\n".join(lines)
    assert "2 per anatomy label map x 2 maps" in text and "50%" in text
    assert SYNTHETIC_LICENCE in text and "non-commercial" in text
    assert f"`ircad_p03_anatomy.nii.gz` SHA256 `{hashlib.sha256(b'bb').hexdigest()}`" in text
    subset = synthetic_lines({"synthetic": {"root": str(tmp_path), "cases": ["ircad_p02"]}})
    assert any("ircad_p02" in x for x in subset) and not any("ircad_p03" in x for x in subset)
    assert synthetic_lines({}) == []


def test_stage_lines_show_per_stage_epochs_patch_and_warm_start():
    cfg = {"train": {"epochs": 20, "iterations_per_epoch": 50, "batch_size": 2, "patch_size": [64, 96, 96]},
           "stages": {"coarse": {"patch_size": [96, 128, 128],
                                 "train": {"epochs": 8, "init_weights": "Resources/Models/liverct-phantom-demo"}},
                      "fine": {"patch_size": [96, 128, 128], "train": {"epochs": 16}}}}
    coarse, fine = stage_training_lines(cfg)
    assert coarse.startswith("- stage `coarse`: 8 x 50") and "[64, 96, 96]" in coarse
    assert "warm-started from `liverct-phantom-demo`" in coarse
    assert fine.startswith("- stage `fine`: 16 x 50") and "warm-started" not in fine
