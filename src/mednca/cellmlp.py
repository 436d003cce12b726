"""The per-cell update network as one fused, memory-lean autograd function.

``relu(feats @ w0.T) @ w1.T`` for F cells, computed in cache-sized chunks. The first layer's
bias rides in the matrix product: the caller appends a column of ones to ``feats`` and the bias
as the last column of ``w0`` (a broadcast bias add would cost one more pass over the hidden
activations). The hidden
activations (F x hidden, the largest tensor of an NCA step) are not stored for backward: they are
recomputed chunk by chunk, which costs one extra small matrix product and saves most of the
training memory of a step. Output channel 0 is always zero (the image channel is never updated).
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK = 4096  # cells per matrix product: keeps a chunk's hidden activations in cache


class _CellMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feats: Tensor, w0: Tensor, w1: Tensor) -> Tensor:
        # feats (F, K), w0 (hidden, K), w1 (C, hidden) -> (F, C)
        out = feats.new_empty((feats.shape[0], w1.shape[0]))
        w0t, w1t = w0.t(), w1.t()
        for s in range(0, feats.shape[0], CHUNK):
            hidden = torch.mm(feats[s:s + CHUNK], w0t).relu_()
            torch.mm(hidden, w1t, out=out[s:s + CHUNK])
        out[:, 0] = 0
        ctx.save_for_backward(feats, w0, w1)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        feats, w0, w1 = ctx.saved_tensors
        w1 = w1.clone()
        w1[0] = 0  # output channel 0 is forced to zero: no gradient flows through it
        g_feats = torch.empty_like(feats) if ctx.needs_input_grad[0] else None
        g_w0, g_w1 = torch.zeros_like(w0), torch.zeros_like(w1)
        w0t = w0.t()
        for s in range(0, feats.shape[0], CHUNK):
            f, go = feats[s:s + CHUNK], grad_out[s:s + CHUNK]
            hidden = torch.mm(f, w0t).relu_()  # recomputed (chunk, hidden)
            g_w1.addmm_(go.t(), hidden)
            # relu's gradient in one fused op (a float*bool multiply would first copy the mask to float)
            g_hidden = torch.ops.aten.threshold_backward(go @ w1, hidden, 0)  # (chunk, hidden)
            g_w0.addmm_(g_hidden.t(), f)
            if g_feats is not None:
                torch.mm(g_hidden, w0, out=g_feats[s:s + CHUNK])
        g_w1[0] = 0
        return g_feats, g_w0, g_w1


def cell_mlp(feats: Tensor, w0: Tensor, w1: Tensor) -> Tensor:
    """(F, K) per-cell inputs -> (F, C) updates, channel 0 zero.

    Args:
        feats: (F, K) inputs of F cells (perception vectors, with a ones column for the bias).
        w0: (hidden, K) first-layer weights (bias as the column that meets the ones).
        w1: (C, hidden) second-layer weights (no bias).
    """
    return _CellMLP.apply(feats, w0, w1)
