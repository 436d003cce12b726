"""A run of NCA steps as one fused autograd function, with a hand-written backward.

One step on a channels-last state (N = B*H*W cells of C channels):

1. ``seen``: the two learned 3x3 views of every cell, one conv (no bias) on the reflect-padded
   state;
2. the F firing cells' perception vectors ``[cell, seen, 1]`` (the ones column carries the
   first layer's bias, into which the views' biases are folded) are gathered and run through
   ``relu(feats @ w0.T) @ w1.T`` in cache-sized chunks;
3. the result is added to those cells, in place.

Running all steps of a level inside one :class:`torch.autograd.Function` means no autograd
node, no new state tensor and no gradient buffer per step: forward updates one state in place,
backward walks the steps in reverse updating one gradient in place. Only the firing cells' rows
go through the per-cell network, forward and backward (about half the work at fire rate 0.5).

Without a gradient, when it takes fewer multiply-adds (32 channels and a hidden layer of 128:
yes; 16 channels: no, see :func:`composes`), the first layer is composed with the perception
filters into one (9C, hidden) matrix applied to the firing cells' gathered 3x3 neighbourhoods:
no conv over every cell, no perception vectors (:func:`step_composed_`). Same function, other
rounding.

With ``segment`` set, forward keeps only every ``segment``-th state and backward recomputes
each segment's steps before back-propagating through them (gradient checkpointing): memory of
``steps / segment`` states plus ``segment`` steps' intermediates instead of all steps'.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK = 4096  # cells per matrix product: keeps a chunk's hidden activations in cache


class StepWeights(NamedTuple):
    """The weights as a step uses them (see :meth:`mednca.nn.level.NCALevel.packed_weights`).

    Attributes:
        wv: (2C, C, 3, 3) both perception filters stacked (their biases folded into w0's).
        w0: (hidden, 3C + 1) first layer, its bias as the last column.
        w1: (C, hidden) second layer (no bias), row 0 zero: the image channel is never updated.
    """

    wv: Tensor
    w0: Tensor
    w1: Tensor


class _Saved(NamedTuple):
    """What backward needs of one step."""

    padded: Tensor  # (B, C, H+2, W+2) channels-last: the reflect-padded state the step read
    feats: Tensor  # (F, 3C+1) the firing cells' perception vectors
    hidden: Tensor | None  # (F, hidden) their hidden activations (after the ReLU)
    fired: Tensor  # (F,) the firing cells' indices


def reflect_padded(state: Tensor) -> Tensor:
    """(B, H, W, C) channels-last state -> (B, C, H+2, W+2) reflect-padded by one cell, still
    channels-last in memory."""
    return F.pad(state.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="reflect")


def views(state: Tensor, wv: Tensor) -> tuple[Tensor, Tensor]:
    """The two learned 3x3 views (without bias) of every cell of a (B, H, W, C) channels-last state.

    Returns:
        ``(seen, padded)``: (B*H*W, 2C) views and the (B, C, H+2, W+2) reflect-padded state
        (channels-last in memory) they were computed from.
    """
    padded = reflect_padded(state)
    seen = F.conv2d(padded, wv)  # (B, 2C, H, W), channels-last in memory
    return seen.permute(0, 2, 3, 1).reshape(-1, wv.shape[0]), padded


class ComposedWeights(NamedTuple):
    """The weights of an inference step with the first layer composed with the perception filters
    (see :func:`composed_weights`).

    Attributes:
        wf: (9C, hidden) first layer on a cell's 3x3 neighbourhood, (dy, dx, channel) row-major.
        bias: (hidden,) first layer's bias (the perception biases folded in).
        w1t: (hidden, C) second layer, transposed.
    """

    wf: Tensor
    bias: Tensor
    w1t: Tensor


def composes(channels: int, hidden: int) -> bool:
    """Whether the composed first layer takes fewer multiply-adds per firing cell than the conv
    over every cell (fire rate 0.5: two cells per firing cell) plus the first layer on
    ``[cell, views, 1]``: 9C*hidden < 2*9C*2C + (3C+1)*hidden."""
    c = channels
    return 9 * c * hidden < 2 * 9 * c * 2 * c + (3 * c + 1) * hidden


def composed_weights(weights: StepWeights) -> ComposedWeights:
    """Compose the first layer with the perception filters: ``w0 @ [x, K x, 1]`` on a cell's 3x3
    neighbourhood ``p`` (x its centre) is ``wf.T @ p + bias``."""
    wv, w0, w1 = weights
    c = wv.shape[1]
    kmat = wv.permute(2, 3, 1, 0).reshape(9 * c, 2 * c)  # (9C, 2C): the views of a neighbourhood
    wf = kmat @ w0[:, c:3 * c].t()
    wf[4 * c:5 * c] += w0[:, :c].t()  # the cell itself is its neighbourhood's centre
    return ComposedWeights(wf, w0[:, 3 * c].contiguous(), w1.t())


def neighbourhood_rows(fired: Tensor, h: int, w: int) -> Tensor:
    """(9F,) rows of each firing cell's 3x3 neighbourhood in the (B*(H+2)*(W+2), C) rows of a
    reflect-padded channels-last state: cell by cell, (dy, dx) row-major.

    Args:
        fired: (F,) indices of cells in the flattened (B, H, W) grid.
        h, w: Grid height and width before padding.
    """
    b = fired // (h * w)
    y = (fired - b * (h * w)) // w
    corner = fired + b * (2 * h + 2 * w + 4) + 2 * y  # the neighbourhood's top-left in the padded grid
    offsets = torch.arange(3, device=fired.device)
    offsets = (offsets[:, None] * (w + 2) + offsets).view(-1)
    return (corner[:, None] + offsets).view(-1)


def step_composed_(state: Tensor, weights: ComposedWeights, fired: Tensor) -> None:
    """One step on a (B, H, W, C) contiguous state, in place, with the composed first layer; no
    autograd (inference).

    Args:
        state: (B, H, W, C) contiguous channels-last state, updated in place.
        weights: From :func:`composed_weights`.
        fired: (F,) distinct indices of the firing cells in the flattened (B, H, W) grid.
    """
    b, h, w, c = state.shape
    cells = state.view(-1, c)
    padded_rows = reflect_padded(state).permute(0, 2, 3, 1).reshape(-1, c)  # (B*(H+2)*(W+2), C); a view if channels-last
    rows = neighbourhood_rows(fired, h, w)
    dx = cells.index_select(0, fired)  # (F, C): the firing cells, then + their update
    for s in range(0, fired.shape[0], CHUNK):
        patches = padded_rows.index_select(0, rows[9 * s:9 * (s + CHUNK)]).view(-1, 9 * c)  # (chunk, 9C)
        hidden = torch.mm(patches, weights.wf).add_(weights.bias).relu_()
        dx[s:s + CHUNK].addmm_(hidden, weights.w1t)
    cells.index_copy_(0, fired, dx)  # fired indices are distinct


def step_(state: Tensor, weights: StepWeights, fired: Tensor, keep: bool = False) -> _Saved | None:
    """One step on a (B, H, W, C) contiguous state, in place; no autograd.

    Args:
        state: (B, H, W, C) contiguous channels-last state, updated in place.
        weights: The packed weights.
        fired: (F,) distinct indices of the firing cells in the flattened (B, H, W) grid.
        keep: Return what backward needs of this step.
    """
    c = state.shape[-1]
    wv, w0, w1 = weights
    seen, padded = views(state, wv)
    cells = state.view(-1, c)
    dx = cells.index_select(0, fired)  # (F, C): the firing cells, then + their update
    feats = cells.new_empty((fired.shape[0], w0.shape[1]))  # (F, 3C+1): [cell, seen, 1]
    feats[:, :c].copy_(dx)
    torch.index_select(seen, 0, fired, out=feats[:, c:3 * c])
    feats[:, 3 * c:].fill_(1.0)
    hidden = feats.new_empty((feats.shape[0], w0.shape[0])) if keep else None
    w0t, w1t = w0.t(), w1.t()
    for s in range(0, feats.shape[0], CHUNK):
        h = torch.mm(feats[s:s + CHUNK], w0t, out=None if hidden is None else hidden[s:s + CHUNK]).relu_()
        dx[s:s + CHUNK].addmm_(h, w1t)
    cells.index_copy_(0, fired, dx)  # fired indices are distinct
    return _Saved(padded, feats, hidden, fired) if keep else None


def step_backward_(grad: Tensor, saved: _Saved, weights: StepWeights, grads: list[Tensor]) -> None:
    """Back-propagate one step: ``grad`` (B, H, W, C), the loss gradient of the step's output
    state, becomes that of its input state, in place; the weights' gradients are added to
    ``grads``: ``(g_wv, g_w0.T, g_w1)`` (the first layer's transposed, (3C+1, hidden): a
    feats.T @ g_hidden product took 16-29 % less time than g_hidden.T @ feats at these shapes)."""
    b, h, w, c = grad.shape
    padded, feats, hidden, fired = saved
    wv, w0, w1 = weights
    g_wv, g_w0t, g_w1 = grads
    g = grad.view(-1, c)
    go_all = g.index_select(0, fired)  # (F, C)
    g_seen_rows = go_all.new_empty((feats.shape[0], 2 * c))  # (F, 2C)
    # contiguous copies (tiny): the products below took ~10 % less time at 32 channels
    w0x, w0v = w0[:, :c].contiguous(), w0[:, c:3 * c].contiguous()
    for s in range(0, feats.shape[0], CHUNK):
        f, go, hid = feats[s:s + CHUNK], go_all[s:s + CHUNK], hidden[s:s + CHUNK]
        g_w1.addmm_(go.t(), hid)
        g_hidden = torch.ops.aten.threshold_backward(go @ w1, hid, 0)  # ReLU's gradient, one op
        g_w0t.addmm_(f.t(), g_hidden)
        torch.mm(g_hidden, w0v, out=g_seen_rows[s:s + CHUNK])
        go.addmm_(g_hidden, w0x)  # the identity path plus the update's path
    g.index_copy_(0, fired, go_all)
    # the views: only the firing cells' rows have a gradient
    g_seen = g.new_zeros((b, h, w, 2 * c))
    g_seen.view(-1, 2 * c).index_copy_(0, fired, g_seen_rows)
    g_padded, g_conv, _ = torch.ops.aten.convolution_backward(
        g_seen.permute(0, 3, 1, 2), padded, wv, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
        [True, True, False])
    g_wv.add_(g_conv)
    # reflect padding's backward: fold the border rows, then columns, onto the cells they copied
    gp = g_padded.permute(0, 2, 3, 1)  # (B, H+2, W+2, C)
    gp[:, 2].add_(gp[:, 0])
    gp[:, h - 1].add_(gp[:, h + 1])
    gp[:, :, 2].add_(gp[:, :, 0])
    gp[:, :, w - 1].add_(gp[:, :, w + 1])
    grad.add_(gp[:, 1:h + 1, 1:w + 1])


class _Steps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, state: Tensor, wv: Tensor, w0: Tensor, w1: Tensor,
                fired: list[Tensor], segment: int | None) -> Tensor:
        weights = StepWeights(wv, w0, w1)
        out = state.clone()
        if segment is None:  # keep every step's intermediates
            kept = [step_(out, weights, f, keep=True) for f in fired]
            ctx.save_for_backward(wv, w0, w1, *(t for s in kept for t in s))
        else:  # keep the state at the start of every segment
            starts = []
            for i, f in enumerate(fired):
                if i % segment == 0:
                    starts.append(out.clone())
                step_(out, weights, f)
            ctx.save_for_backward(wv, w0, w1, *starts)
        ctx.fired, ctx.segment = fired, segment
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        wv, w0, w1, *rest = ctx.saved_tensors
        weights = StepWeights(wv, w0, w1)
        grads = [torch.zeros_like(wv), w0.new_zeros((w0.shape[1], w0.shape[0])), torch.zeros_like(w1)]
        grad = grad_out.contiguous().clone()  # (B, H, W, C), updated in place step by step
        if ctx.segment is None:
            saved = [_Saved(*rest[4 * i:4 * i + 4]) for i in range(len(ctx.fired))]
            for s in reversed(saved):
                step_backward_(grad, s, weights, grads)
        else:  # the last segment is rerun too: keeping its intermediates instead raised the peak
            # of prostate batch-20 training from 1.18 to 1.57 GB (both levels' last segments held)
            fired, k = ctx.fired, ctx.segment
            for j in reversed(range(len(rest))):
                state = rest[j].clone()
                saved = [step_(state, weights, f, keep=True) for f in fired[j * k:(j + 1) * k]]
                for s in reversed(saved):
                    step_backward_(grad, s, weights, grads)
                del saved
        g_wv, g_w0t, g_w1 = grads
        return grad, g_wv, g_w0t.t(), g_w1, None, None


def run_steps(state: Tensor, weights: StepWeights, fired: Iterable[Tensor], segment: int | None = None) -> Tensor:
    """Steps on a (B, H, W, C) state, one list of firing cells per step.

    Differentiable with respect to ``state`` and ``weights``; with no gradient needed, the steps
    run in place on a copy of ``state`` and keep nothing (with the composed first layer when
    :func:`composes` says it is cheaper).

    Args:
        state: (B, H, W, C) contiguous channels-last state (not modified).
        weights: The packed weights.
        fired: Per step, (F,) distinct indices of the firing cells in the flattened (B, H, W) grid;
            without a gradient it is consumed one step at a time (so a generator draws lazily).
        segment: Gradient checkpointing: keep the state every ``segment`` steps and recompute the
            steps in between in backward (None: keep every step's intermediates).

    Returns:
        (B, H, W, C) state after the steps; channel 0 unchanged.
    """
    if segment is not None and segment < 1:
        raise ValueError(f"segment must be >= 1, got {segment}")
    needs_grad = torch.is_grad_enabled() and (state.requires_grad or any(t.requires_grad for t in weights))
    if not needs_grad:
        out = state.clone()
        if composes(state.shape[-1], weights.w0.shape[0]):
            composed = composed_weights(weights)
            for f in fired:
                step_composed_(out, composed, f)
        else:
            for f in fired:
                step_(out, weights, f)
        return out
    return _Steps.apply(state, *weights, list(fired), segment)
