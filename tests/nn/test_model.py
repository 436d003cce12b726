"""mednca.nn.model.MedNCA: shapes, patch cropping, the level-1 -> level-2 hand-off, determinism."""

from __future__ import annotations

import pytest
import torch

from mednca.config import MedNCAConfig
from mednca.nn.model import MedNCA


def _images(b: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand((b, 1, size, size), generator=torch.Generator().manual_seed(seed))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_inference_shape(tiny_config, randomise):
    model = randomise(MedNCA(tiny_config), scale=0.2)
    out = model(_images(3), generator=_gen())
    assert out.shape == (3, 1, 16, 16)
    assert torch.isfinite(out).all()


def test_inference_on_other_sizes(tiny_config):
    model = MedNCA(tiny_config)
    assert model(torch.rand(1, 1, 8, 24)).shape == (1, 1, 8, 24)


def test_training_shapes(tiny_config, randomise):
    model = randomise(MedNCA(tiny_config), scale=0.2)
    images = _images(3)
    logits_p, labels_p = model(images, (images > 0.5).float(), generator=_gen())
    assert logits_p.shape == labels_p.shape == (3, 1, 8, 8)
    assert logits_p.requires_grad


def test_crop_takes_the_window_at_the_origins():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    origins = torch.tensor([[0, 2], [3, 1]])
    out = MedNCA.crop(x, origins, 3)
    assert out.shape == (2, 3, 3, 3)
    assert torch.equal(out[0], x[0, :, 0:3, 2:5])
    assert torch.equal(out[1], x[1, :, 3:6, 1:4])


def test_training_patch_is_the_same_window_in_image_label_and_state(tiny_config, randomise):
    model = randomise(MedNCA(tiny_config), scale=0.2)
    b, size, p = 4, 16, tiny_config.patch_size
    images = _images(b, size)
    # the label encodes the pixel's position, so the crop tells where it came from
    rows = torch.arange(size).view(size, 1).expand(size, size)
    cols = torch.arange(size).view(1, size).expand(size, size)
    labels = (rows * size + cols).float().expand(b, 1, size, size).clone()
    # replay the generator: global_state consumes it first, then patch_origins
    g = _gen(42)
    state = model.global_state(images, g)
    origins = model.patch_origins(labels, g)
    _, labels_p = model(images, labels, generator=_gen(42))
    assert torch.equal(labels_p, MedNCA.crop(labels, origins, p))
    for i, (r, c) in enumerate(origins.tolist()):
        assert 0 <= r <= size - p and 0 <= c <= size - p
        assert labels_p[i, 0, 0, 0].item() == r * size + c
    state_p = MedNCA.crop(state, origins, p)
    assert torch.equal(state_p[:, :1], MedNCA.crop(images, origins, p))


def test_patch_state_is_the_window_of_the_global_state(tiny_config, randomise):
    model = randomise(MedNCA(tiny_config), scale=0.2)
    images = _images(5, 16)
    origins = torch.tensor([[0, 0], [8, 8], [3, 5], [7, 1], [2, 8]])
    full = MedNCA.crop(model.global_state(images, _gen(6)), origins, tiny_config.patch_size)
    with torch.no_grad():
        small = model.level1_state(images, _gen(6))
    direct = model.patch_state(small, images, origins)
    assert direct.shape == full.shape
    # without a gradient the steps may compose the first layer with the views: other rounding
    assert torch.allclose(direct, full.detach(), atol=1e-6, rtol=1e-5)


def test_patch_origins_uniform_cover_the_image(tiny_config):
    model = MedNCA(tiny_config)
    labels = torch.zeros((200, 1, 16, 16))
    origins = model.patch_origins(labels, _gen(1))
    assert origins.shape == (200, 2)
    assert origins.min() == 0 and origins.max() == 16 - 8


def test_fg_patch_prob_one_always_contains_foreground(tiny_config):
    model = MedNCA(tiny_config.replace(fg_patch_prob=1.0))
    b = 64
    labels = torch.zeros((b, 1, 16, 16))
    g = _gen(3)
    for i in range(b):  # one small foreground square at a random place, incl. the corners
        r, c = torch.randint(0, 15, (2,), generator=g).tolist()
        labels[i, 0, r:r + 2, c:c + 2] = 1
    labels[0].zero_()
    labels[0, 0, 0, 0] = 1
    labels[1].zero_()
    labels[1, 0, 15, 15] = 1
    origins = model.patch_origins(labels, _gen(4))
    patches = MedNCA.crop(labels, origins, 8)
    assert (patches.flatten(1).amax(1) > 0).all()


def test_global_state_hand_off(tiny_config, randomise):
    model = randomise(MedNCA(tiny_config), scale=0.2)
    images = _images(2)
    s = tiny_config.scale
    state = model.global_state(images, _gen(5))
    assert state.shape == (2, tiny_config.channels, 16, 16)
    assert torch.equal(state[:, :1], images)
    hidden = state[:, 1:]
    blocks = hidden.unfold(2, s, s).unfold(3, s, s)  # (B, C-1, H/s, W/s, s, s)
    assert torch.equal(blocks, blocks[..., :1, :1].expand_as(blocks))
    # and the blocks are the level-1 state run on the average-pooled image
    small = torch.nn.functional.avg_pool2d(images, s)
    level1 = model.level1(model.seed(small), tiny_config.steps, _gen(5))
    assert torch.equal(hidden[:, :, ::s, ::s], level1[:, 1:])
    assert hidden.abs().sum() > 0


def test_fresh_model_outputs_zero_logits(tiny_config):
    model = MedNCA(tiny_config)
    images = _images(2)
    assert torch.equal(model(images), torch.zeros(2, 1, 16, 16))
    logits_p, _ = model(images, (images > 0.5).float())
    assert torch.equal(logits_p, torch.zeros(2, 1, 8, 8))
    mean, _ = model.predict_proba(images)
    assert torch.allclose(mean, torch.full_like(mean, 0.5))


def test_same_seed_same_output_different_seed_different_output(tiny_config, randomise):
    model = randomise(MedNCA(tiny_config), scale=0.2)
    images = _images(2)
    a = model(images, generator=_gen(1))
    b = model(images, generator=_gen(1))
    c = model(images, generator=_gen(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("shape", [(16, 16), (2, 16, 16), (2, 2, 16, 16), (2, 1, 18, 16), (2, 1, 16, 4)])
def test_invalid_images_raise(tiny_config, shape):
    with pytest.raises(ValueError):
        MedNCA(tiny_config)(torch.zeros(shape))


def test_labels_must_match_images(tiny_config):
    with pytest.raises(ValueError, match="labels"):
        MedNCA(tiny_config)(torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 16, 8))


@pytest.mark.parametrize("k", [1, 3])
def test_predict_proba_ensemble(tiny_config, k, randomise):
    model = randomise(MedNCA(tiny_config), scale=0.2)
    mean, std = model.predict_proba(_images(2), ensemble=k, generator=_gen(0))
    assert mean.shape == std.shape == (2, 1, 16, 16)
    assert (mean >= 0).all() and (mean <= 1).all()
    assert (std >= 0).all()
    if k == 1:
        assert torch.equal(std, torch.zeros_like(std))
    else:
        assert std.max() > 0


def test_predict_proba_rejects_empty_ensemble(tiny_config):
    with pytest.raises(ValueError):
        MedNCA(tiny_config).predict_proba(_images(1), ensemble=0)


def test_parameter_count_of_paper_32_channel_config():
    c, h = 32, 128
    per_level = 2 * (c * c * 9 + c) + (3 * c * h + h) + h * c
    assert per_level == 35_008
    model = MedNCA(MedNCAConfig.preset("paper-prostate"))
    assert model.config.channels == c and model.config.hidden == h
    assert model.num_parameters() == 2 * per_level == 70_016


def test_coarse_loss_adds_level1_logits_and_pooled_labels(tiny_config, randomise):
    plain = randomise(MedNCA(tiny_config), scale=0.2)
    coarse = MedNCA(tiny_config.replace(coarse_loss=0.5))
    coarse.load_state_dict(plain.state_dict())
    images = _images(3)
    labels = (images > 0.5).float()
    logits_p, labels_p, logits_1, labels_1 = coarse(images, labels, generator=_gen(3))
    s = tiny_config.scale
    assert logits_1.shape == labels_1.shape == (3, 1, 16 // s, 16 // s)
    assert torch.allclose(labels_1, torch.nn.functional.avg_pool2d(labels, s))
    with torch.no_grad():  # level 1's own segmentation channel, from the same randomness
        assert torch.allclose(logits_1, coarse.level1_state(images, _gen(3))[:, 1:2], atol=1e-6)
    # the patch path draws the same randomness as without the option
    same_p, same_labels = plain(images, labels, generator=_gen(3))
    assert torch.equal(labels_p, same_labels) and torch.allclose(logits_p, same_p)
    logits_1.sum().backward()  # the coarse term trains level 1 only
    assert coarse.level1.parameters().__next__().grad is not None
    assert all(p.grad is None for p in coarse.level2.parameters())
