"""Lower-precision weights for edge export: fp16, or int8 with one scale per output channel.

Only the weights are stored at lower precision; every computation stays float32. A weight is
any floating-point parameter with two or more dimensions (the perception filters and the two
layers of the per-cell network); biases stay float32 (they are < 2 % of the parameters).

* ``fp16``: each weight rounded to the nearest float16.
* ``int8``: symmetric, per output channel (axis 0): ``scale = max|w| / 127`` per channel,
  ``q = round(w / scale)`` in [-127, 127], and the weight used is ``q * scale``.

:func:`round_weights` applies the rounding to a PyTorch model (to measure what it costs in
Dice); :func:`quantize_onnx` stores an exported ONNX graph's weights that way (float16
initializers + ``Cast``, or int8 initializers + ``DequantizeLinear``), so the file is smaller
and runs on onnxruntime with exactly the rounded weights.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

#: Weight precisions, full precision first.
WEIGHT_PRECISIONS = ("fp32", "fp16", "int8")
INT8_MAX = 127


def _check(precision: str) -> None:
    if precision not in WEIGHT_PRECISIONS:
        raise ValueError(f"unknown weight precision {precision!r}; choose one of: {', '.join(WEIGHT_PRECISIONS)}")


def int8_scales(weight: Tensor) -> Tensor:
    """(O, ...) weight -> (O,) float32 symmetric int8 scales, ``max|w| / 127`` per output channel
    (1 for an all-zero channel, so its codes are 0)."""
    amax = weight.detach().float().flatten(1).abs().amax(1)
    return torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))


def int8_codes(weight: Tensor, scales: Tensor) -> Tensor:
    """(O, ...) weight and its (O,) scales -> int8 codes of the same shape."""
    shape = (-1,) + (1,) * (weight.ndim - 1)
    return torch.round(weight.detach().float() / scales.view(shape)).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)


def rounded(weight: Tensor, precision: str) -> Tensor:
    """The float32 values a weight takes when stored at ``precision``."""
    _check(precision)
    w = weight.detach().float()
    if precision == "fp16":
        return w.half().float()
    if precision == "int8":
        scales = int8_scales(w)
        return int8_codes(w, scales).float() * scales.view((-1,) + (1,) * (w.ndim - 1))
    return w.clone()


def is_weight(tensor: Tensor | np.ndarray) -> bool:
    """Whether a parameter/initializer counts as a weight (floating point, two or more dims)."""
    dtype_ok = tensor.is_floating_point() if isinstance(tensor, Tensor) else np.issubdtype(tensor.dtype, np.floating)
    return dtype_ok and tensor.ndim >= 2


def round_weights(model: nn.Module, precision: str) -> nn.Module:
    """A copy of ``model`` whose weights hold their ``precision``-rounded values (float32 tensors).

    Args:
        model: Any module (usually a :class:`~mednca.nn.model.MedNCA`); not changed.
        precision: ``"fp32"`` (an unchanged copy), ``"fp16"`` or ``"int8"``.
    """
    _check(precision)
    out = deepcopy(model)
    with torch.no_grad():
        for param in out.parameters():
            if is_weight(param):
                param.copy_(rounded(param, precision))
    return out


def weight_stats(model: nn.Module, precision: str) -> dict[str, Any]:
    """How much rounding changes the weights: ``{"n_weights", "max_abs_error", "max_rel_error"}``
    (relative to each tensor's largest magnitude)."""
    n, max_abs, max_rel = 0, 0.0, 0.0
    for param in model.parameters():
        if is_weight(param):
            err = (rounded(param, precision) - param.detach().float()).abs().max().item()
            top = param.detach().abs().max().item()
            n += param.numel()
            max_abs, max_rel = max(max_abs, err), max(max_rel, err / top if top else 0.0)
    return {"n_weights": n, "max_abs_error": max_abs, "max_rel_error": max_rel}


def quantize_onnx(proto: Any, precision: str) -> Any:
    """Store the weight initializers of an ONNX model at ``precision`` (in place; returned).

    Each weight initializer ``W`` becomes ``W_fp16`` + ``Cast(to=float)`` or ``W_int8`` and
    ``W_scale`` + ``DequantizeLinear(axis=0)`` producing ``W``, so the rest of the graph is
    unchanged and sees float32 weights equal to :func:`rounded` ones. Needs opset >= 13.
    """
    _check(precision)
    if precision == "fp32":
        return proto
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    new_inits, new_nodes = [], []
    for init in list(graph.initializer):
        value = numpy_helper.to_array(init)
        if not is_weight(value) or value.dtype != np.float32:
            new_inits.append(init)
            continue
        name = init.name
        if precision == "fp16":
            new_inits.append(numpy_helper.from_array(value.astype(np.float16), f"{name}_fp16"))
            new_nodes.append(helper.make_node("Cast", [f"{name}_fp16"], [name], to=TensorProto.FLOAT,
                                              name=f"{name}_cast"))
        else:
            w = torch.from_numpy(value.copy())
            scales = int8_scales(w)
            new_inits.append(numpy_helper.from_array(int8_codes(w, scales).numpy(), f"{name}_int8"))
            new_inits.append(numpy_helper.from_array(scales.numpy(), f"{name}_scale"))
            new_inits.append(numpy_helper.from_array(np.zeros(len(scales), np.int8), f"{name}_zero"))
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero"],
                                              [name], axis=0, name=f"{name}_dequantize"))
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    nodes = new_nodes + list(graph.node)  # the weights are produced before any node reads them
    del graph.node[:]
    graph.node.extend(nodes)
    return proto
