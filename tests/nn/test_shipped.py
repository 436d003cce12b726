"""Models shipped in the package: found by name, checked against their card's sha256, refused
when damaged; their cards are complete."""

from __future__ import annotations

import json
import shutil

import pytest

import mednca
from mednca.errors import CheckpointError
from mednca.nn import shipped
from mednca.nn.build import load_model
from mednca.nn.shipped import CARD_KEYS, model_card, sha256_of, shipped_checkpoint, shipped_names


def test_hippocampus_is_shipped_with_a_complete_card():
    assert "hippocampus" in shipped_names()
    card = model_card("hippocampus")
    assert set(CARD_KEYS) <= set(card)
    assert card["sha256"] == sha256_of(shipped_checkpoint("hippocampus"))
    assert 0.0 < card["review"]["threshold"] and card["review"]["ensemble"] >= 2
    assert card["test"]["cases"] == 78 and card["training"]["val_cases"] == 18
    assert "CC-BY-SA" in card["licence"] and "not a medical device" in card["intended_use"].lower()


def test_load_by_name_through_the_api():
    model = mednca.load_model("hippocampus")
    assert model.config.orientation == "RAS"
    assert model.num_parameters() == model_card("hippocampus")["parameters"]
    assert not model.training


def test_unknown_name_lists_the_shipped_ones():
    with pytest.raises(CheckpointError, match="hippocampus"):
        model_card("liver")


@pytest.fixture
def copied(tmp_path, monkeypatch):
    """The shipped models copied to a folder the test may damage."""
    folder = tmp_path / "models"
    shutil.copytree(shipped._folder(), folder)
    monkeypatch.setattr(shipped, "_folder", lambda: folder)
    return folder


def test_a_damaged_file_is_refused(copied):
    path = copied / "hippocampus.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_model("hippocampus")


def test_an_incomplete_card_is_refused(copied):
    card = json.loads((copied / "hippocampus.json").read_text())
    del card["licence"]
    (copied / "hippocampus.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="licence"):
        model_card("hippocampus")


def test_a_file_of_the_same_name_wins(tmp_path, monkeypatch, random_model):
    """A checkpoint path named like a shipped model is the user's file, not the shipped one."""
    random_model().save(tmp_path / "hippocampus")
    monkeypatch.chdir(tmp_path)
    assert load_model("hippocampus").config.orientation is None
