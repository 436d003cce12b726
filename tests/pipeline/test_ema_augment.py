"""Weight averaging (``ema``) and training augmentation (``augment``): what they change, and that a
run with them still resumes exactly."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from mednca.checkpoint import TrainingState
from mednca.errors import ConfigError
from mednca.nn.build import build_model
from mednca.pipeline.augment import (Augmentation, apply_augmentation, augment_batch, change_contrast,
                                     sample_augmentation)
from mednca.pipeline.ema import WeightAverage
from mednca.pipeline.train import train


def _quiet(**kwargs):
    return dict(progress=False, log=lambda *_: None, **kwargs)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the average ---------------------------------------------------------------------------------
def test_average_follows_the_formula(tiny_config):
    model = build_model(tiny_config, generator=torch.Generator().manual_seed(0))
    ema = WeightAverage(model, 0.9)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(100)  # warm-up over: decay 0.9
    for name, value in ema.state_dict().items():
        assert torch.allclose(value, start[name] + 0.1)
    ema.update(0)  # warm-up: decay min(0.9, 1/10) = 0.1, close to the weights
    for name, value in ema.state_dict().items():
        assert torch.allclose(value, start[name] + 0.1 + 0.9 * 0.9)


def test_applied_swaps_in_and_back(tiny_config):
    model = build_model(tiny_config, generator=torch.Generator().manual_seed(0))
    ema = WeightAverage(model, 0.5)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        next(model.parameters()).add_(2.0)
    moved = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.applied() as inside:
        assert _same(dict(inside.state_dict()), raw)
    assert _same(dict(model.state_dict()), moved)


def test_bad_decay_is_refused(tiny_config):
    model = build_model(tiny_config)
    for decay in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError):
            WeightAverage(model, decay)


# -- augmentation --------------------------------------------------------------------------------
def _batch(n: int = 4, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    images = torch.rand(n, 1, size, size, generator=g)
    labels = torch.zeros(n, 1, size, size)
    labels[:, :, 4:9, 2:6] = 1.0  # off-centre, so that a flip moves it
    return images, labels


def test_identity_parameters_change_nothing():
    images, labels = _batch()
    n = len(images)
    aug = Augmentation(apply=torch.ones(n, dtype=torch.bool), flip=torch.zeros(n, dtype=torch.bool),
                       angle=torch.zeros(n), scale=torch.ones(n), gamma=torch.ones(n))
    out_images, out_labels = apply_augmentation(images, labels, aug)
    assert torch.allclose(out_images, images, atol=1e-5)
    assert torch.equal(out_labels, labels)


def test_flip_mirrors_image_and_label():
    images, labels = _batch()
    n = len(images)
    aug = Augmentation(apply=torch.tensor([True, False, True, True]), flip=torch.ones(n, dtype=torch.bool),
                       angle=torch.zeros(n), scale=torch.ones(n), gamma=torch.ones(n))
    out_images, out_labels = apply_augmentation(images, labels, aug)
    assert torch.allclose(out_images[0], images[0].flip(-1), atol=1e-5)
    assert torch.equal(out_labels[2], labels[2].flip(-1))
    assert torch.equal(out_images[1], images[1]) and torch.equal(out_labels[1], labels[1])  # not applied


def test_rotation_and_gamma_keep_ranges_and_binary_labels():
    images, labels = _batch()
    n = len(images)
    aug = Augmentation(apply=torch.ones(n, dtype=torch.bool), flip=torch.zeros(n, dtype=torch.bool),
                       angle=torch.full((n,), math.radians(90.0)), scale=torch.ones(n), gamma=torch.full((n,), 2.0))
    out_images, out_labels = apply_augmentation(images, labels, aug)
    assert float(out_images.min()) >= 0.0 and float(out_images.max()) <= 1.0
    assert set(out_labels.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(out_labels.sum(), labels.sum())  # a quarter turn moves the box, keeps its size
    assert not torch.equal(out_labels, labels)


def test_sampling_is_seeded_and_prob_zero_draws_nothing():
    a = sample_augmentation(8, 0.5, torch.Generator().manual_seed(1))
    b = sample_augmentation(8, 0.5, torch.Generator().manual_seed(1))
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("apply", "flip", "angle", "scale", "gamma"))
    g = torch.Generator().manual_seed(5)
    before = g.get_state()
    images, labels = _batch()
    assert augment_batch(images, labels, 0.0, g) == (images, labels)
    assert torch.equal(g.get_state(), before)


def test_zoom_range_follows_max_scale():
    default = sample_augmentation(4000, 1.0, torch.Generator().manual_seed(2)).scale
    wide = sample_augmentation(4000, 1.0, torch.Generator().manual_seed(2), max_scale=0.5).scale
    assert 0.85 <= float(default.min()) and float(default.max()) <= 1.15
    assert 0.5 <= float(wide.min()) < 0.55 and 1.45 < float(wide.max()) <= 1.5
    with pytest.raises(ValueError, match="max_scale"):
        sample_augmentation(2, 1.0, torch.Generator(), max_scale=0.9)


def test_gamma_range_follows_max_log_gamma():
    default = sample_augmentation(4000, 1.0, torch.Generator().manual_seed(3)).gamma.log()
    wide = sample_augmentation(4000, 1.0, torch.Generator().manual_seed(3), max_log_gamma=1.0).gamma.log()
    assert -0.4 <= float(default.min()) < -0.38 and 0.38 < float(default.max()) <= 0.4
    assert -1.0 <= float(wide.min()) < -0.95 and 0.95 < float(wide.max()) <= 1.0
    with pytest.raises(ValueError, match="max_log_gamma"):
        sample_augmentation(2, 1.0, torch.Generator(), max_log_gamma=2.0)


def test_contrast_scales_the_labelled_structure_and_fades_outside():
    images = torch.full((2, 1, 40, 40), 0.5)
    labels = torch.zeros(2, 1, 40, 40)
    labels[:, :, 10:30, 10:30] = 1
    out = change_contrast(images, labels, torch.tensor([1.6, 0.5]))
    assert out[0, 0, 20, 20].item() == pytest.approx(0.8, abs=1e-3)  # deep inside: the full factor
    assert out[1, 0, 20, 20].item() == pytest.approx(0.25, abs=1e-3)
    assert torch.equal(out[:, :, :2], images[:, :, :2])  # far outside: unchanged
    row = out[0, 0, 20, :20]
    assert bool((row[1:] >= row[:-1]).all()) and 0.5 < row[10].item() < 0.8  # a soft edge at the border
    bright = change_contrast(torch.full((1, 1, 40, 40), 0.9), labels[:1], torch.tensor([2.0]))
    assert float(bright.max()) == 1.0  # clipped to [0, 1]


def test_contrast_range_draws_extra_and_leaves_the_other_parameters():
    plain = sample_augmentation(4000, 1.0, torch.Generator().manual_seed(4))
    wide = sample_augmentation(4000, 1.0, torch.Generator().manual_seed(4), max_log_contrast=0.5)
    assert plain.contrast is None
    assert all(torch.equal(getattr(plain, f), getattr(wide, f)) for f in ("apply", "flip", "angle", "scale", "gamma"))
    log_c = wide.contrast.log()
    assert -0.5 <= float(log_c.min()) < -0.48 and 0.48 < float(log_c.max()) <= 0.5
    with pytest.raises(ValueError, match="max_log_contrast"):
        sample_augmentation(2, 1.0, torch.Generator(), max_log_contrast=1.6)
    images, labels = _batch()
    n = len(images)
    keep = dict(apply=torch.ones(n, dtype=torch.bool), flip=torch.zeros(n, dtype=torch.bool),
                angle=torch.zeros(n), scale=torch.ones(n), gamma=torch.ones(n))
    same, _ = apply_augmentation(images, labels, Augmentation(**keep))
    brighter, moved_labels = apply_augmentation(images, labels, Augmentation(**keep, contrast=torch.full((n,), 1.5)))
    inside = moved_labels > 0
    assert float(brighter[inside].sum()) > float(same[inside].sum())


def test_zoom_and_gamma_ranges_are_validated_in_the_config(tiny_config):
    assert tiny_config.augment_scale == 0.15  # the zoom range before the field existed
    assert tiny_config.augment_gamma == 0.4  # the gamma range before the field existed
    with pytest.raises(ConfigError, match="augment_scale"):
        tiny_config.replace(augment_scale=0.8)
    with pytest.raises(ConfigError, match="augment_gamma"):
        tiny_config.replace(augment_gamma=-0.1)
    assert tiny_config.augment_contrast == 0.0  # off, as the paper
    with pytest.raises(ConfigError, match="augment_contrast"):
        tiny_config.replace(augment_contrast=2.0)


# -- in training ---------------------------------------------------------------------------------
def test_ema_run_saves_the_average_and_resumes_exactly(tmp_path, synthetic_task, tiny_config):
    config = tiny_config.replace(ema=0.9, augment=0.5)
    straight = train(synthetic_task, tmp_path / "straight", config, seed=0, epochs=2, **_quiet())
    state = TrainingState(tmp_path / "straight" / "checkpoints" / "last.state.safetensors")
    last = load_file(str(tmp_path / "straight" / "checkpoints" / "last.safetensors"))
    assert state.ema_state is not None and _same(state.ema_state, {k: last[k] for k in state.ema_state})
    assert not _same(state.model_state, last)  # the raw weights are not the averaged ones
    assert _same(dict(straight.model.state_dict()), last)  # the returned model is the averaged one
    train(synthetic_task, tmp_path / "resumed", config, seed=0, epochs=1, **_quiet())
    train(synthetic_task, tmp_path / "resumed", None, resume=True, epochs=2, **_quiet())
    resumed = load_file(str(tmp_path / "resumed" / "checkpoints" / "last.safetensors"))
    assert _same(last, resumed)
    again = TrainingState(tmp_path / "resumed" / "checkpoints" / "last.state.safetensors")
    assert _same(state.model_state, again.model_state)


def test_augment_and_its_ranges_change_the_run(tmp_path, synthetic_task, tiny_config):
    augmented = tiny_config.replace(augment=1.0)
    runs = {"plain": tiny_config, "aug": augmented, "zoom": augmented.replace(augment_scale=0.5),
            "gamma": augmented.replace(augment_gamma=1.0), "contrast": augmented.replace(augment_contrast=0.5)}
    for name, config in runs.items():
        train(synthetic_task, tmp_path / name, config, seed=0, epochs=1, **_quiet())
    plain, aug, zoom, gamma, contrast = (load_file(str(tmp_path / name / "checkpoints" / "last.safetensors"))
                                         for name in runs)
    assert not _same(plain, aug)
    assert not _same(aug, zoom)  # the trainer passes augment_scale on
    assert not _same(aug, gamma)  # and augment_gamma
    assert not _same(aug, contrast)  # and augment_contrast


def test_coarse_loss_changes_the_run_and_resumes_exactly(tmp_path, synthetic_task, tiny_config):
    config = tiny_config.replace(coarse_loss=1.0)
    train(synthetic_task, tmp_path / "plain", tiny_config, seed=0, epochs=2, **_quiet())
    train(synthetic_task, tmp_path / "coarse", config, seed=0, epochs=2, **_quiet())
    plain = load_file(str(tmp_path / "plain" / "checkpoints" / "last.safetensors"))
    coarse = load_file(str(tmp_path / "coarse" / "checkpoints" / "last.safetensors"))
    assert not _same(plain, coarse)
    train(synthetic_task, tmp_path / "resumed", config, seed=0, epochs=1, **_quiet())
    train(synthetic_task, tmp_path / "resumed", None, resume=True, epochs=2, **_quiet())
    assert _same(coarse, load_file(str(tmp_path / "resumed" / "checkpoints" / "last.safetensors")))
