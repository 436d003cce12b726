"""mednca.nn.steps.run_steps: the fused run of steps equals the plain steps, forward and backward."""

from __future__ import annotations

import pytest
import torch

from mednca.nn.level import NCALevel
from mednca.nn.steps import run_steps

C, HIDDEN = 5, 9


def _level(seed: int = 0) -> NCALevel:
    level = NCALevel(C, HIDDEN, fire_rate=0.5)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in level.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return level


def _masks(level: NCALevel, x: torch.Tensor, steps: int, seed: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [level.fire_mask(x, g) for _ in range(steps)]


def _dense(level: NCALevel, x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    for m in masks:
        x = level.step_dense(x, m)
    return x


def _fused(level: NCALevel, x: torch.Tensor, masks: list[torch.Tensor], segment: int | None) -> torch.Tensor:
    state = x.permute(0, 2, 3, 1).contiguous()
    fired = [NCALevel.fired(m) for m in masks]
    out = run_steps(state, level.packed_weights(), fired, segment)
    return out.permute(0, 3, 1, 2)


@pytest.mark.parametrize("segment", [None, 1, 2, 3, 6, 10])
@pytest.mark.parametrize("chunk", [4096, 7])
def test_run_steps_matches_dense_steps_outputs_and_gradients(segment, chunk, monkeypatch):
    monkeypatch.setattr("mednca.nn.steps.CHUNK", chunk)
    level = _level()
    x = torch.randn((2, C, 7, 6), generator=torch.Generator().manual_seed(1))
    masks = _masks(level, x, 6)
    weight = torch.randn((2, C, 7, 6), generator=torch.Generator().manual_seed(2))
    results = []
    for run in (lambda x: _dense(level, x, masks), lambda x: _fused(level, x, masks, segment)):
        xi = x.clone().requires_grad_(True)
        level.zero_grad()
        out = run(xi)
        (out * weight).sum().backward()
        results.append((out.detach(), xi.grad, [p.grad.clone() for p in level.parameters()]))
    (out_d, gx_d, gp_d), (out_f, gx_f, gp_f) = results
    assert torch.allclose(out_f, out_d, atol=1e-5, rtol=1e-5)
    assert torch.equal(out_f[:, 0], x[:, 0])
    assert torch.allclose(gx_f, gx_d, atol=1e-4, rtol=1e-4)
    for a, b in zip(gp_f, gp_d):
        assert torch.allclose(a, b, atol=1e-4 * b.abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("h, w", [(2, 2), (2, 3), (3, 2), (5, 2)])
def test_run_steps_gradients_on_the_smallest_grids(h, w):
    """Reflect padding's backward folds the borders back: on 2-pixel sides every cell is a border cell."""
    level = _level(seed=2)
    x = torch.randn((3, C, h, w), generator=torch.Generator().manual_seed(6))
    masks = _masks(level, x, 3, seed=7)
    weight = torch.randn((3, C, h, w), generator=torch.Generator().manual_seed(8))
    grads = []
    for run in (lambda x: _dense(level, x, masks), lambda x: _fused(level, x, masks, None)):
        xi = x.clone().requires_grad_(True)
        level.zero_grad()
        (run(xi) * weight).sum().backward()
        grads.append([xi.grad] + [p.grad.clone() for p in level.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-4 * b.abs().max().item(), rtol=1e-4)


def test_run_steps_leaves_its_input_alone_and_draws_lazily_without_grad():
    level = _level()
    state = torch.randn((1, 6, 6, C), generator=torch.Generator().manual_seed(3))
    before = state.clone()
    drawn = []

    def fired():
        for _ in range(3):
            drawn.append(1)
            yield torch.arange(0, 36, 2)

    with torch.no_grad():
        out = run_steps(state, level.packed_weights(), fired())
    assert torch.equal(state, before)
    assert len(drawn) == 3 and not torch.equal(out, state)


def test_run_steps_with_no_steps_is_a_copy():
    level = _level()
    state = torch.randn((1, 4, 4, C), requires_grad=True)
    out = run_steps(state, level.packed_weights(), [])
    assert torch.equal(out, state)
    out.sum().backward()
    assert torch.equal(state.grad, torch.ones_like(state))


def test_bad_segment_raises():
    level = _level()
    with pytest.raises(ValueError, match="segment"):
        run_steps(torch.zeros((1, 4, 4, C)), level.packed_weights(), [], segment=0)


@pytest.mark.parametrize("segment", [None, 2])
def test_run_steps_backward_passes_gradcheck_in_double_precision(segment):
    """The hand-written backward against finite differences, every input at once."""
    g = torch.Generator().manual_seed(11)
    c, hidden = 3, 4
    state = torch.randn((2, 3, 4, c), generator=g, dtype=torch.float64, requires_grad=True)
    wv = (torch.randn((2 * c, c, 3, 3), generator=g, dtype=torch.float64) * 0.3).requires_grad_(True)
    w0 = (torch.randn((hidden, 3 * c + 1), generator=g, dtype=torch.float64) * 0.3).requires_grad_(True)
    w1 = (torch.randn((c, hidden), generator=g, dtype=torch.float64) * 0.3).requires_grad_(True)
    fired = [torch.randperm(24, generator=g)[:k].sort().values for k in (12, 0, 7)]  # incl. a step without firing cells

    def run(s, a, b, d):
        from mednca.nn.steps import StepWeights

        return run_steps(s, StepWeights(a, b, d), fired, segment)

    assert torch.autograd.gradcheck(run, (state, wv, w0, w1), eps=1e-6, atol=1e-5)


def test_run_steps_follows_the_input_dtype():
    level = _level().double()
    state = torch.randn((1, 4, 4, C), dtype=torch.float64)
    out = run_steps(state, level.packed_weights(), [torch.arange(0, 16, 3)])
    assert out.dtype == torch.float64


def test_composes_when_it_takes_fewer_multiply_adds():
    from mednca.nn.steps import composes

    assert composes(32, 128) and not composes(16, 128)  # the presets: prostate composes, hippocampus not
    for c, hidden in [(16, 128), (21, 128), (22, 128), (32, 128), (5, 9), (3, 64)]:
        composed = 9 * c * hidden
        conv_then_layer = 2 * (9 * c * 2 * c) + (3 * c + 1) * hidden  # the conv runs on every cell
        assert composes(c, hidden) == (composed < conv_then_layer)


@pytest.mark.parametrize("h, w", [(2, 2), (3, 5), (7, 6)])
def test_neighbourhood_rows_gather_each_cells_reflect_padded_3x3_block(h, w):
    from mednca.nn.steps import neighbourhood_rows

    g = torch.Generator().manual_seed(5)
    state = torch.randn((3, h, w, C), generator=g)
    fired = torch.randperm(3 * h * w, generator=g)[:h * w]  # a third of the cells, in any order
    padded = torch.nn.functional.pad(state.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="reflect")
    rows = padded.permute(0, 2, 3, 1).reshape(-1, C)
    got = rows.index_select(0, neighbourhood_rows(fired, h, w)).view(-1, 3, 3, C)
    blocks = padded.unfold(2, 3, 1).unfold(3, 3, 1)  # (B, C, H, W, 3, 3)
    want = blocks.permute(0, 2, 3, 4, 5, 1).reshape(-1, 3, 3, C)[fired]
    assert torch.equal(got, want)


@pytest.mark.parametrize("compose", [True, False])
@pytest.mark.parametrize("chunk", [4096, 7])
@pytest.mark.parametrize("shape", [(2, 7, 6), (3, 2, 2)])
def test_inference_steps_match_the_dense_steps_either_way(compose, chunk, shape, monkeypatch):
    """Without a gradient: the composed first layer and the conv + first layer give the dense steps."""
    monkeypatch.setattr("mednca.nn.steps.CHUNK", chunk)
    monkeypatch.setattr("mednca.nn.steps.composes", lambda c, hidden: compose)
    level = _level(seed=3)
    b, h, w = shape
    x = torch.randn((b, C, h, w), generator=torch.Generator().manual_seed(9))
    masks = _masks(level, x, 5, seed=10)
    with torch.no_grad():
        want = _dense(level, x, masks)
        got = _fused(level, x, masks, None)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[:, 0], x[:, 0])


def test_composed_inference_in_double_precision_matches_to_rounding():
    from mednca.nn.steps import composes

    level = _level(seed=4).double()
    assert composes(C, HIDDEN)
    x = torch.randn((2, C, 5, 4), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    masks = _masks(level, x, 4, seed=3)
    with torch.no_grad():
        assert torch.allclose(_fused(level, x, masks, None), _dense(level, x, masks), atol=1e-12, rtol=1e-12)


def test_composed_inference_step_without_firing_cells_changes_nothing():
    level = _level(seed=5)
    state = torch.randn((2, 3, 4, C), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = run_steps(state, level.packed_weights(), [torch.zeros(0, dtype=torch.long), torch.tensor([0, 5, 23])])
        want = run_steps(state, level.packed_weights(), [torch.tensor([0, 5, 23])])
    assert torch.equal(out, want)
