"""The update of the firing cells as one fused autograd function.

For the F firing cells of a step, :func:`fired_update` gathers each cell's perception vector
(its state and its two learned views, plus a ones column that carries the first layer's bias),
runs the per-cell network ``relu(feats @ w0.T) @ w1.T`` in cache-sized chunks and adds the
result to those cells. Its backward is written by hand, so a step costs one gather and one
scatter each way, with no autograd bookkeeping per gather or concatenation, and only the
firing cells' rows of the views' gradient are written (the rest are zero).

The hidden activations (F x hidden, the largest tensor of a step) are kept for backward when
``keep_hidden`` is set (faster), otherwise recomputed chunk by chunk (one more small matrix
product, far less memory). The caller passes ``w1`` with row 0 zero: channel 0 holds the image
and is never updated.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK = 4096  # cells per matrix product: keeps a chunk's hidden activations in cache


def _mlp_forward(feats: Tensor, w0: Tensor, w1: Tensor, hidden: Tensor | None) -> Tensor:
    """(F, K) -> (F, C); writes relu(feats @ w0.T) into ``hidden`` if given."""
    out = feats.new_empty((feats.shape[0], w1.shape[0]))
    w0t, w1t = w0.t(), w1.t()
    for s in range(0, feats.shape[0], CHUNK):
        if hidden is None:
            h = torch.mm(feats[s:s + CHUNK], w0t).relu_()
        else:
            h = torch.mm(feats[s:s + CHUNK], w0t, out=hidden[s:s + CHUNK]).relu_()
        torch.mm(h, w1t, out=out[s:s + CHUNK])
    return out


class _FiredUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cells: Tensor, seen: Tensor, fired: Tensor, w0: Tensor, w1: Tensor,
                keep_hidden: bool) -> Tensor:
        # cells (N, C), seen (N, 2C), fired (F,), w0 (hidden, 3C+1), w1 (C, hidden) -> (N, C)
        ones = cells.new_ones((fired.shape[0], 1))
        feats = torch.cat((cells.index_select(0, fired), seen.index_select(0, fired), ones), 1)  # (F, 3C+1)
        hidden = feats.new_empty((feats.shape[0], w0.shape[0])) if keep_hidden else None
        dx = _mlp_forward(feats, w0, w1, hidden)  # (F, C)
        ctx.save_for_backward(feats, w0, w1, fired, hidden)
        ctx.seen_shape = seen.shape
        # fired indices are distinct: writing (gathered state + update) back beats an index_add
        return cells.index_copy(0, fired, dx.add_(feats[:, :cells.shape[1]]))

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        feats, w0, w1, fired, hidden = ctx.saved_tensors
        c = w1.shape[0]
        go_all = grad_out.index_select(0, fired)  # (F, C)
        g_feats = torch.empty_like(feats)
        g_w0, g_w1 = torch.zeros_like(w0), torch.zeros_like(w1)
        w0t = w0.t()
        for s in range(0, feats.shape[0], CHUNK):
            f, go = feats[s:s + CHUNK], go_all[s:s + CHUNK]
            h = torch.mm(f, w0t).relu_() if hidden is None else hidden[s:s + CHUNK]  # (chunk, hidden)
            g_w1.addmm_(go.t(), h)
            # relu's gradient in one fused op (a float*bool multiply would first copy the mask to float)
            g_hidden = torch.ops.aten.threshold_backward(go @ w1, h, 0)  # (chunk, hidden)
            g_w0.addmm_(g_hidden.t(), f)
            torch.mm(g_hidden, w0, out=g_feats[s:s + CHUNK])
        g_cells = None
        if ctx.needs_input_grad[0]:  # the identity path plus the update's path, at the fired rows
            g_cells = grad_out.index_copy(0, fired, g_feats[:, :c].add_(go_all))
        g_seen = None
        if ctx.needs_input_grad[1]:
            g_seen = grad_out.new_zeros(ctx.seen_shape).index_copy_(0, fired, g_feats[:, c:3 * c])
        return g_cells, g_seen, None, g_w0, g_w1, None


def fired_update(cells: Tensor, seen: Tensor, fired: Tensor, w0: Tensor, w1: Tensor,
                 keep_hidden: bool = True) -> Tensor:
    """The cells after one step's update of the firing ones; differentiable.

    Args:
        cells: (N, C) cell states (N = all cells of the batch, channels-last).
        seen: (N, 2C) the two learned 3x3 views of every cell.
        fired: (F,) distinct indices into N of the cells that fire.
        w0: (hidden, 3C + 1) first-layer weights; the last column is the bias.
        w1: (C, hidden) second-layer weights (no bias), row 0 zero (the image channel).
        keep_hidden: Keep the (F, hidden) activations for backward instead of recomputing them
            (only when a gradient will be needed).

    Returns:
        (N, C): ``cells`` with ``relu([cells, seen, 1] @ w0.T) @ w1.T`` added at the ``fired`` rows,
        channel 0 unchanged.
    """
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (cells, seen, w0, w1))
    return _FiredUpdate.apply(cells, seen, fired, w0, w1, keep_hidden and needs_grad)
