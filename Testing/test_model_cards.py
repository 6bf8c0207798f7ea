"""Model cards are read by users on other machines: commands in them are typed from the project root.

The bundled cards and model.json files once carried the training machine's absolute path of the
config (``liverseg-train train /work/main/training/configs/...``); both are checked here, and export
writes the command and config portably.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CARDS = sorted([ROOT / "Resources" / "MODEL_CARD.md",
                *(ROOT / "LiverCTSegmentation" / "Resources" / "Models").glob("*/MODEL_CARD.md"),
                *(ROOT / "LiverCTSegmentation" / "Resources" / "Models").glob("*/model.json")])
# A home or work folder of some machine; example data paths such as /data/LiTS stay allowed.
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home|Users|root|mnt|scratch)/\S+")


@pytest.mark.parametrize("card", CARDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_card_has_no_machine_specific_path(card):
    found = MACHINE_PATH.findall(card.read_text(encoding="utf-8"))
    assert not found, f"{card.relative_to(ROOT)} names paths of the training machine: {found}"


def test_cards_are_found():
    assert len(CARDS) >= 5, CARDS


def test_export_writes_the_command_as_typed_from_the_project_root(tmp_path):
    """A new card gets no machine path either: presets by name, paths relative to the working directory."""
    from liverct_training.config import CONFIG_DIR
    from liverct_training.export import portable_command

    cmd = (f"-m liverct_training.cli train {CONFIG_DIR / 'real_liver_tumor.yaml'} "
           f"output.run_dir={tmp_path / 'runs' / 'fold-a'} data.split.test=[a] data.root=/data/LiTS")
    assert portable_command(cmd, cwd=tmp_path) == (
        "-m liverct_training.cli train real_liver_tumor output.run_dir=runs/fold-a data.split.test=[a] "
        "data.root=/data/LiTS")
