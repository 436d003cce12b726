"""mednca.nn.level.NCALevel: identity at init, fire masks, channel 0 clamping, sparse == dense."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mednca.nn.level import NCALevel

C, HIDDEN = 6, 12


def _state(b: int = 2, h: int = 8, w: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn((b, C, h, w), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("steps", [0, 1, 5])
def test_fresh_level_is_identity(steps):
    level = NCALevel(C, HIDDEN, fire_rate=1.0)
    assert torch.count_nonzero(level.fc1.weight) == 0
    x = _state()
    assert torch.equal(level(x, steps), x)
    with torch.no_grad():  # sparse path too
        assert torch.equal(level(x, steps), x)


def test_fire_rate_zero_changes_nothing(randomise):
    level = randomise(NCALevel(C, HIDDEN, fire_rate=0.0))
    x = _state()
    assert torch.equal(level(x, 3), x)
    with torch.no_grad():
        assert torch.equal(level(x, 3), x)


def test_fire_rate_one_updates_all_cells(randomise):
    level = randomise(NCALevel(C, HIDDEN, fire_rate=1.0))
    x = _state()
    y = level(x, 1)
    changed = (y[:, 1:] != x[:, 1:]).any(1)  # (B, H, W): some hidden channel changed
    assert changed.all()
    expected = x + level.update(x)
    assert torch.allclose(y[:, 1:], expected[:, 1:], atol=1e-6)


@pytest.mark.parametrize("grad", [True, False])
def test_channel_zero_stays_the_image(grad, randomise):
    level = randomise(NCALevel(C, HIDDEN, fire_rate=0.5))
    x = _state()
    with torch.set_grad_enabled(grad):
        y = level(x, 7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(y[:, 0], x[:, 0])
    assert not torch.equal(y[:, 1:], x[:, 1:])


@pytest.mark.parametrize("chunk", [4096, 7])
def test_step_matches_dense(chunk, monkeypatch, randomise):
    monkeypatch.setattr("mednca.nn.steps.CHUNK", chunk)
    level = randomise(NCALevel(C, HIDDEN, fire_rate=0.5))
    x = _state(h=9, w=7)
    mask = level.fire_mask(x, torch.Generator().manual_seed(5))
    assert 0 < mask.sum() < mask.numel()
    dense = x + level.update(x) * mask
    dense = torch.cat((x[:, :1], dense[:, 1:]), 1).detach()
    with torch.no_grad():
        sparse = level.step(x, torch.Generator().manual_seed(5))
    assert sparse.shape == x.shape
    assert torch.allclose(sparse, dense, atol=1e-5, rtol=1e-5)
    assert torch.equal(sparse[:, 0], x[:, 0])
    unfired = (mask == 0).expand_as(x)
    assert torch.equal(sparse[unfired], x[unfired])


def test_no_grad_step_equals_grad_step_for_same_generator_seed(randomise):
    level = randomise(NCALevel(C, HIDDEN, fire_rate=0.5))
    x = _state()
    dense = level(x, 4, generator=torch.Generator().manual_seed(9)).detach()
    with torch.no_grad():
        sparse = level(x, 4, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(sparse, dense, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [(2, C, 8), (2, C + 1, 8, 8), (2, 1, 8, 8), (C, 8, 8)])
def test_wrong_state_shape_raises(shape):
    with pytest.raises(ValueError, match="expected"):
        NCALevel(C, HIDDEN)(torch.zeros(shape), 1)


@pytest.mark.parametrize("kwargs", [dict(channels=1), dict(channels=4, hidden=0),
                                    dict(channels=4, fire_rate=1.5), dict(channels=4, fire_rate=-0.1)])
def test_invalid_constructor_args_raise(kwargs):
    with pytest.raises(ValueError):
        NCALevel(**kwargs)


def test_perceive_shape_and_reflect_padding(randomise):
    level = randomise(NCALevel(C, HIDDEN))
    x = _state(h=5, w=6)
    p = level.perceive(x)
    assert p.shape == (2, 3 * C, 5, 6)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    assert torch.equal(p[:, :C], x)
    assert torch.allclose(p[:, C:2 * C], F.conv2d(padded, level.p0.weight, level.p0.bias), atol=1e-5)
    assert torch.allclose(p[:, 2 * C:], F.conv2d(padded, level.p1.weight, level.p1.bias), atol=1e-5)
    # not zero padding: the border differs from a zero-padded conv
    zero = F.conv2d(x, level.p0.weight, level.p0.bias, padding=1)
    assert not torch.allclose(p[:, C:2 * C], zero, atol=1e-3)


def test_fire_mask_rate_and_reproducibility():
    level = NCALevel(C, HIDDEN, fire_rate=0.3)
    x = torch.zeros((4, C, 64, 64))
    m1 = level.fire_mask(x, torch.Generator().manual_seed(11))
    m2 = level.fire_mask(x, torch.Generator().manual_seed(11))
    m3 = level.fire_mask(x, torch.Generator().manual_seed(12))
    assert m1.shape == (4, 1, 64, 64) and m1.dtype == x.dtype
    assert set(m1.unique().tolist()) <= {0.0, 1.0}
    assert abs(m1.mean().item() - 0.3) < 0.02
    assert torch.equal(m1, m2)
    assert not torch.equal(m1, m3)


def _grads(level, loss):
    level.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in level.parameters()]


@pytest.mark.parametrize("chunk", [4096, 5])
def test_sparse_step_gradients_match_dense(chunk, monkeypatch, randomise):
    monkeypatch.setattr("mednca.nn.steps.CHUNK", chunk)
    level = randomise(NCALevel(C, HIDDEN, fire_rate=0.5))
    x = _state(h=9, w=7).requires_grad_(True)
    mask = level.fire_mask(x, torch.Generator().manual_seed(5))
    weight = torch.randn_like(x)
    dense_out = level.step_dense(x, mask)
    g_dense = _grads(level, (dense_out * weight).sum())
    gx_dense = x.grad.clone()
    x.grad = None
    sparse_out = level.step(x, torch.Generator().manual_seed(5))
    g_sparse = _grads(level, (sparse_out * weight).sum())
    assert torch.allclose(sparse_out, dense_out, atol=1e-5)
    assert torch.allclose(x.grad, gx_dense, atol=1e-5)
    for a, b in zip(g_sparse, g_dense):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_gradient_checkpointing_changes_nothing(randomise):
    level = randomise(NCALevel(C, HIDDEN, fire_rate=0.5))
    x = _state()
    plain = level(x, 5, generator=torch.Generator().manual_seed(2))
    g_plain = _grads(level, plain[:, 1].square().sum())
    ckpt = level(x, 5, generator=torch.Generator().manual_seed(2), checkpoint=True)
    g_ckpt = _grads(level, ckpt[:, 1].square().sum())
    assert torch.allclose(plain, ckpt, atol=1e-6)
    for a, b in zip(g_plain, g_ckpt):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_packed_weights_follow_the_parameters(randomise):
    level = randomise(NCALevel(C, HIDDEN))
    wv, w0, w1 = level.packed_weights()
    assert wv.shape == (2 * C, C, 3, 3)
    assert w0.shape == (HIDDEN, 3 * C + 1) and w1.shape == (C, HIDDEN)
    assert torch.equal(wv[C:], level.p1.weight) and torch.equal(w0[:, :3 * C], level.fc0.weight.flatten(1))
    assert torch.equal(w1[0], torch.zeros(HIDDEN)) and torch.equal(w1[1:], level.fc1.weight.flatten(1)[1:])
    # the views' biases folded into the first layer's: same pre-activations
    x = _state(h=5, w=4)
    pre = level.fc0(level.perceive(x))  # (B, hidden, H, W)
    views = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), wv)
    feats = torch.cat((x, views, torch.ones_like(x[:, :1])), 1)
    folded = torch.einsum("kc,bchw->bkhw", w0, feats)
    assert torch.allclose(folded, pre, atol=1e-5)


def test_fire_indices_are_the_fire_mask_cells():
    level = NCALevel(C, HIDDEN, fire_rate=0.4)
    x = _state(b=3, h=7, w=5)
    mask = level.fire_mask(x, torch.Generator().manual_seed(4))
    idx = level.fire_indices(x, torch.Generator().manual_seed(4))
    assert torch.equal(idx, NCALevel.fired(mask))
