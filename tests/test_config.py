"""mednca.config: presets, overrides, JSON round trip, validation, command-line overrides."""

from __future__ import annotations

import re

import json

import pytest

from mednca.config import PRESETS, MedNCAConfig, parse_override
from mednca.errors import ConfigError


def test_presets_exist_with_paper_values():
    assert {"hippocampus", "prostate", "demo"} <= set(PRESETS)
    hip = MedNCAConfig.preset("hippocampus")
    assert (hip.image_size, hip.patch_size, hip.scale, hip.steps, hip.fire_rate) == (64, 16, 4, 16, 0.5)
    paper = MedNCAConfig.preset("paper-hippocampus")
    assert (paper.lr, paper.betas, paper.lr_gamma, paper.batch_size) == (1.6e-3, (0.5, 0.5), 0.9999, 32)
    # the fast CPU recipe keeps the paper's model and data settings
    for field in ("channels", "hidden", "steps", "scale", "fire_rate", "image_size", "patch_size", "axis"):
        assert getattr(hip, field) == getattr(paper, field), field
    pro = MedNCAConfig.preset("prostate")  # the CPU recipe: 128² with level 1 at 32², 36 + 8 steps
    assert (pro.image_size, pro.patch_size, pro.scale, pro.channels) == (128, 32, 4, 16)
    assert (pro.coarse_steps, pro.steps) == (36, 8)
    assert pro.normalization == "percentile"
    assert (pro.augment, pro.augment_scale, pro.augment_gamma) == (0.5, 0.4, 0.4)  # zooms of ±40 %
    assert pro.augment_contrast == 0.5 and hip.augment_contrast == 0  # the gland's contrast within exp(±0.5)
    assert hip.name == "hippocampus" and pro.name == "prostate"
    demo = MedNCAConfig.preset("demo")
    assert demo.image_size % demo.scale == 0 and demo.patch_size <= demo.image_size


def test_preset_overrides():
    cfg = MedNCAConfig.preset("hippocampus", steps=32, label=1)
    assert cfg.steps == 32 and cfg.label == 1
    assert cfg.image_size == 64
    assert MedNCAConfig.preset("hippocampus").steps == 16  # presets are not mutated


def test_replace_validates():
    cfg = MedNCAConfig.preset("demo")
    assert cfg.replace(epochs=3).epochs == 3
    with pytest.raises(ConfigError):
        cfg.replace(patch_size=64)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(tmp_path, name):
    cfg = MedNCAConfig.preset(name, label=2, betas=[0.9, 0.99])
    path = tmp_path / "config.json"
    cfg.to_json(path)
    back = MedNCAConfig.from_json(path)
    assert back == cfg
    assert back.to_dict() == cfg.to_dict()
    assert back.name == name and back.betas == (0.9, 0.99)
    assert json.loads(path.read_text())["betas"] == [0.9, 0.99]


def test_unknown_keys_raise():
    with pytest.raises(ConfigError, match="stesp"):
        MedNCAConfig.from_dict({"stesp": 3})
    with pytest.raises(ConfigError):
        MedNCAConfig.preset("hippocampus", stesp=3)
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("overrides, message", [
    (dict(image_size=30, scale=4), "not divisible by scale"),
    (dict(image_size=32, patch_size=64), "exceeds image_size"),
    (dict(fire_rate=1.5), "fire_rate"),
    (dict(fire_rate=-0.1), "fire_rate"),
    (dict(channels=1), "channels must be an integer from 2 to 256, got 1"),
    (dict(steps=0), "steps must be an integer from 1 to 1024, got 0"),
    (dict(channels=2.5), "channels must be an integer from 2 to 256, got 2.5"),
    # hostile sizes (a checkpoint's config asking for unbounded time or memory)
    (dict(steps=1_000_000_000), "steps must be an integer from 1 to 1024"),
    (dict(channels=30000), "channels must be an integer from 2 to 256"),
    (dict(image_size=1 << 20, patch_size=16), "image_size must be an integer from 1 to 2048"),
    (dict(hidden=10**6), "hidden"),
    (dict(scale=1000), "scale"),
    (dict(channels=256, hidden=4096, steps=1024, image_size=2048), "too large to run"),
    (dict(val_ensemble=10**6), "val_ensemble"),
    # wrong types name their field
    (dict(channel="abc"), "channel must be an integer from 0 to 1024, got 'abc'"),
    (dict(channel=1.5), "channel must be an integer"),
    (dict(grad_checkpoint="yes"), "grad_checkpoint must be true or false"),
    (dict(grad_checkpoint=1), "grad_checkpoint must be true or false"),
    (dict(warmup_batches=-1), "warmup_batches"),
    (dict(warmup_batches="many"), "warmup_batches"),
    (dict(name=123), "name must be a string"),
    (dict(label="x"), "label must be a positive label value or null"),
    (dict(lr=float("nan")), "lr must be a finite number"),
    (dict(betas=[0.9, "x"]), "betas"),
    (dict(betas=[0.9, 1.0]), "betas"),
    (dict(model=["mednca"]), "model must be one of"),
    (dict(axis=3), "axis"),
    (dict(interpolation="nearest"), "interpolation"),
    (dict(normalization="zscore"), "normalization"),
    (dict(betas=[0.9]), "betas"),
    (dict(label=0), "label"),
    (dict(lr_gamma=0.0), "lr_gamma"),
])
def test_invalid_values_raise_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        MedNCAConfig.from_dict(overrides)


def test_the_paper_models_are_within_the_limits():
    for name in ("hippocampus", "prostate", "paper-hippocampus", "paper-prostate"):
        MedNCAConfig.preset(name, steps=64)  # the authors' prostate setting


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*hippocampus"):
        MedNCAConfig.preset("nope")


def test_unreadable_json_raises_config_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError):
        MedNCAConfig.from_json(path)
    with pytest.raises(ConfigError):
        MedNCAConfig.from_json(tmp_path / "missing.json")


@pytest.mark.parametrize("text, expected", [
    ("steps=32", ("steps", 32)),
    ("lr=1e-3", ("lr", 1e-3)),
    ("fire_rate=0.25", ("fire_rate", 0.25)),
    ("betas=[0.9,0.99]", ("betas", [0.9, 0.99])),
    ("label=null", ("label", None)),
    ("interpolation=linear", ("interpolation", "linear")),
    ("warmup-batches=5", ("warmup_batches", 5)),
    ("preset=a=b", ("preset", "a=b")),
])
def test_parse_override(text, expected):
    assert parse_override(text) == expected


def test_parse_override_needs_equals():
    with pytest.raises(ConfigError):
        parse_override("steps")


def test_parsed_overrides_apply():
    cfg = MedNCAConfig.preset("demo").replace(**dict(map(parse_override, ["steps=8", "betas=[0.9,0.99]"])))
    assert cfg.steps == 8 and cfg.betas == (0.9, 0.99)


def test_scalar_betas_raise_config_error():
    with pytest.raises(ConfigError):
        MedNCAConfig.preset("demo").replace(**dict([parse_override("betas=0.5")]))


def test_nan_lr_raises_config_error():
    with pytest.raises(ConfigError):
        MedNCAConfig(lr=float("nan"))


_PRESET_SHADOWED = ("config.py: the `preset` classmethod (def preset, ~line 123) is defined after and "
                    "replaces the `preset: str = field(default='custom', compare=False)` dataclass "
                    "default, so MedNCAConfig() gets preset=<bound method> and compare=False is lost")


def test_default_config_is_custom_and_json_serialisable(tmp_path):
    cfg = MedNCAConfig()
    assert cfg.name == "custom"
    cfg.to_json(tmp_path / "config.json")  # TypeError: Object of type method is not JSON serializable
    assert MedNCAConfig.from_json(tmp_path / "config.json") == cfg


def test_preset_name_is_not_compared():
    cfg = MedNCAConfig.preset("demo")
    assert cfg.replace(name="custom") == cfg


def test_paper_prostate_is_the_authors_configuration():
    """train_Med_NCA.ipynb: 32 channels, hidden 128, 64 steps per level, 256² slices with level 1
    at 64², 64² patches, batch 20, Adam 1.6e-3 / (0.5, 0.5) x 0.9999, 0.5-99.5 percentile clip."""
    c = MedNCAConfig.preset("paper-prostate")
    assert (c.channels, c.hidden, c.steps, c.image_size // c.scale, c.image_size, c.patch_size) == (32, 128, 64, 64, 256, 64)
    assert (c.batch_size, c.lr, c.betas, c.lr_gamma) == (20, 1.6e-3, (0.5, 0.5), 0.9999)
    assert c.normalization == "robust" and c.fg_patch_prob == 0.0
