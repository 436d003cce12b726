"""mednca.edge.quantize: fp16 / int8 weight rounding, and ONNX files that store weights that way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mednca.edge.quantize import (INT8_MAX, int8_codes, int8_scales, quantize_onnx, round_weights, rounded,
                             weight_stats)

def test_int8_per_channel_codes_and_scales():
    w = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [2.0, 1.0, -0.01]])
    scales = int8_scales(w)
    assert torch.allclose(scales, torch.tensor([1.0 / INT8_MAX, 1.0, 2.0 / INT8_MAX]))
    codes = int8_codes(w, scales)
    assert codes.dtype == torch.int8
    assert codes[0].tolist() == [64, -127, 32]  # 63.5 rounds half to even
    assert codes[1].tolist() == [0, 0, 0]
    assert codes.abs().max() <= INT8_MAX
    # each channel's largest magnitude is represented exactly; every error is at most half a step
    deq = rounded(w, "int8")
    assert deq[0, 1] == -1.0 and deq[2, 0] == 2.0
    assert ((deq - w).abs() <= scales[:, None] / 2 + 1e-7).all()


def test_fp16_rounding_and_unknown_precision():
    w = torch.tensor([[1.0 + 2 ** -12, 3.0]])
    assert rounded(w, "fp16")[0, 0] == 1.0 and rounded(w, "fp32")[0, 0] == w[0, 0]
    with pytest.raises(ValueError, match="precision"):
        rounded(w, "int4")


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_round_weights_changes_weights_only_and_copies(precision, random_model):
    model = random_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    low = round_weights(model, precision)
    for name, value in low.state_dict().items():
        assert torch.equal(model.state_dict()[name], before[name])  # the original is untouched
        if value.ndim >= 2:
            assert not torch.equal(value, before[name])
            assert torch.allclose(value, before[name], atol=0.02)
        else:  # biases stay float32 as they were
            assert torch.equal(value, before[name])
    stats = weight_stats(model, precision)
    assert stats["n_weights"] == sum(p.numel() for p in model.parameters() if p.ndim >= 2)
    assert 0 < stats["max_rel_error"] < (1e-3 if precision == "fp16" else 1 / INT8_MAX)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_onnx_export_with_low_precision_weights_matches_rounded_torch_model(precision, tmp_path: Path, random_model):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from mednca.edge.export import META_WEIGHTS, draw_noise, export_model

    model = random_model()
    full = export_model(model, tmp_path / "fp32.onnx", explicit_noise=True)
    low = export_model(model, tmp_path / f"{precision}.onnx", explicit_noise=True, weights=precision)
    assert low.stat().st_size < full.stat().st_size
    proto = onnx.load(str(low))
    assert {p.key: p.value for p in proto.metadata_props}[META_WEIGHTS] == precision
    stored = {i.data_type for i in proto.graph.initializer if len(i.dims) >= 2}
    assert stored == {onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.INT8}

    x = torch.rand((2, 1, 16, 24), generator=torch.Generator().manual_seed(1))
    noise1, noise2 = draw_noise(model.config, 2, 16, 24, torch.Generator().manual_seed(3))
    session = ort.InferenceSession(str(low), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": x.numpy(), "noise1": noise1.numpy(), "noise2": noise2.numpy()})[0]
    with torch.no_grad():
        eager_low = round_weights(model, precision)(x, generator=torch.Generator().manual_seed(3)).numpy()
        eager_full = model(x, generator=torch.Generator().manual_seed(3)).numpy()
    np.testing.assert_allclose(got, eager_low, atol=1e-4, rtol=0)
    assert np.abs(eager_low - eager_full).max() > 1e-6  # the rounding is really there


def test_low_precision_needs_onnx_and_a_known_precision(tmp_path: Path, random_model):
    pytest.importorskip("onnx")
    from mednca.edge.export import ExportError, export_model

    model = random_model()
    with pytest.raises(ExportError, match="ONNX exports only"):
        export_model(model, tmp_path / "m.pt", "torchscript", weights="int8")
    with pytest.raises(ExportError, match="weight precision"):
        export_model(model, tmp_path / "m.onnx", weights="int4")
    with pytest.raises(ExportError, match="opset"):
        export_model(model, tmp_path / "m.onnx", weights="int8", opset=11)
    assert not list(tmp_path.iterdir())


def test_quantize_onnx_fp32_is_a_no_op():
    sentinel = object()
    assert quantize_onnx(sentinel, "fp32") is sentinel


def test_cli_weight_choices_are_the_library_precisions():
    from mednca.cli import build_parser
    from mednca.edge.quantize import WEIGHT_PRECISIONS

    export = build_parser()._subparsers._group_actions[0].choices["export"]
    weights = next(a for a in export._actions if a.dest == "weights")
    assert tuple(weights.choices) == WEIGHT_PRECISIONS and weights.default == "fp32"
