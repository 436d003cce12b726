"""The exactness check run before a case is timed: mednca and the plain reference must agree."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ...nn.reference import PlainMedNCA, plain_name
from ...pipeline.losses import dice_bce_loss
from .cases import Case, bench_model, forward_all

#: Tolerances: max |mednca - plain| <= RTOL * max |plain| + ATOL over the outputs, and with
#: GRAD_RTOL per parameter over the gradients.
RTOL, ATOL = 1e-4, 1e-6
GRAD_RTOL = 1e-4


def _compare(a: Tensor, ref: Tensor, rtol: float, atol: float = ATOL) -> tuple[float, float, bool]:
    """(max |a - ref|, max |ref|, within ``rtol * max |ref| + atol``); not within if either
    holds NaN or inf."""
    if not (torch.isfinite(a).all() and torch.isfinite(ref).all()):
        return math.inf, math.inf, False
    diff = (a - ref).abs().max().item() if a.numel() else 0.0
    scale = ref.abs().max().item() if ref.numel() else 0.0
    return diff, scale, diff <= rtol * scale + atol


def _compare_gradients(model: torch.nn.Module, plain: torch.nn.Module) -> dict[str, Any]:
    """Every parameter's gradient of ``model`` (a MedNCA) against its ``plain`` counterpart."""
    worst_rel, worst_abs, grads_ok = 0.0, 0.0, True
    plain_params = dict(plain.named_parameters())
    for name, p in model.named_parameters():
        q = plain_params[plain_name(name)]
        diff, scale, ok = _compare(p.grad.reshape(q.grad.shape), q.grad, GRAD_RTOL)
        grads_ok &= ok
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf))
    return {"grad_max_abs_diff": worst_abs, "grad_max_rel_diff": worst_rel, "grads_ok": grads_ok,
            "grad_rtol": GRAD_RTOL}


def check_case(case: Case, images: Tensor, labels: Tensor | None, seed: int = 0) -> dict[str, Any]:
    """Run MedNCA and :class:`PlainMedNCA` with the same weights and generator seed on (N, 1, S, S)
    ``images`` (and for training cases (N, 1, S, S) ``labels``); compare the outputs and for
    training every gradient of one Dice/BCE loss.

    Returns:
        ``max_abs_diff`` and ``max_abs_output`` (of the outputs), ``output_ok``,
        ``same_generator_state`` (both made the same random calls), for training
        ``same_patches`` and the ``grad_*`` fields, the tolerances, and ``ok``: all of them hold.
    """
    model = bench_model(case.config, seed)
    plain = PlainMedNCA.from_mednca(model)
    g_m, g_p = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    result: dict[str, Any] = {"rtol": RTOL, "atol": ATOL}
    if case.train:
        model.train()
        plain.train()
        out_m, lab_m = model(images, labels, generator=g_m)
        dice_bce_loss(out_m, lab_m).backward()
        out_p, lab_p = plain(images, labels, generator=g_p)
        dice_bce_loss(out_p, lab_p).backward()
        result["same_patches"] = bool(torch.equal(lab_m, lab_p))
        result.update(_compare_gradients(model, plain))
    else:
        model.eval()
        plain.eval()
        with torch.no_grad():
            out_m = forward_all(model, images, g_m)
            out_p = forward_all(plain, images, g_p)
    diff, scale, out_ok = _compare(out_m.detach(), out_p.detach(), RTOL)
    result.update(max_abs_diff=diff, max_abs_output=scale, output_ok=out_ok,
                  same_generator_state=bool(torch.equal(g_m.get_state(), g_p.get_state())))
    result["ok"] = bool(out_ok and result["same_generator_state"] and result.get("grads_ok", True)
                        and result.get("same_patches", True))
    return result
