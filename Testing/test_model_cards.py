"""Model cards are read by users on other machines: commands in them are typed from the project root.

The bundled cards once carried the training machine's absolute path of the config
(``liverseg-train train /work/main/training/configs/...``). model.json keeps its ``training``
record as written at export (its SHA256 identifies the model for resume), so only the cards
are checked here.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CARDS = sorted([ROOT / "Resources" / "MODEL_CARD.md",
                *(ROOT / "LiverCTSegmentation" / "Resources" / "Models").glob("*/MODEL_CARD.md")])
# A home or work folder of some machine; example data paths such as /data/LiTS stay allowed.
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home|Users|root|mnt|scratch)/\S+")


@pytest.mark.parametrize("card", CARDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_card_has_no_machine_specific_path(card):
    found = MACHINE_PATH.findall(card.read_text(encoding="utf-8"))
    assert not found, f"{card.relative_to(ROOT)} names paths of the training machine: {found}"


def test_cards_are_found():
    assert len(CARDS) >= 3, CARDS
