"""Edge export: a trained Med-NCA as one self-contained ONNX or TorchScript file.

The exported graph maps (B, 1, H, W) float32 images, normalised as mednca does (per slice to
[0, 1], the config's ``normalization``), to (B, 1, H, W) logits. It runs both NCA levels with the dense reference step
(:meth:`NCALevel.step_dense`, the same math as the sparse path ``MedNCA.forward`` uses) and draws
the fire masks inside the graph (``torch.rand_like``; ONNX ``RandomUniformLike``), so it stays
stochastic like the real model. Batch, height and width are dynamic (H and W must be multiples
of ``scale`` and at least ``2 * scale``, as for the PyTorch model).

With ``explicit_noise=True`` the graph instead takes the uniform noise as two more inputs,
``noise1`` (S1, B, 1, H/scale, W/scale) and ``noise2`` (S2, B, 1, H, W), S1 and S2 the steps of
the two levels (a cell fires where
noise < fire_rate): reproducible, and exactly comparable to ``MedNCA.forward`` fed the same
random numbers (see :func:`draw_noise`).

ONNX files carry the mednca version and the config JSON in ``metadata_props``; TorchScript files
in an extra file ``mednca.json``. Running them needs only ``onnxruntime`` or ``torch``. ONNX
files can store their weights as fp16 or int8 (``weights=``, see :mod:`mednca.edge.quantize`): a
smaller file, float32 compute.
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import parse_config, resolve_checkpoint
from ..config import MedNCAConfig
from ..errors import CheckpointError, ExportError
from ..fsutil import atomic_path, check_output
from ..nn.build import load_model
from ..nn.level import NCALevel
from ..nn.model import MedNCA
from ..runtime import time_calls
from ..version import __version__
from .quantize import WEIGHT_PRECISIONS, quantize_onnx

#: Export formats and their default file suffix.
FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt"}
#: Keys of the metadata written into exported files.
#: Every ONNX operator :func:`export_model` writes (all weight precisions, with and without noise
#: inputs). Graphs with others (e.g. ``Loop``, which could run unboundedly) are refused.
EXPORTED_OPS = frozenset({"Add", "AveragePool", "Cast", "Concat", "Constant", "ConstantOfShape", "Conv",
                          "DequantizeLinear", "Equal", "Expand", "Gather", "Identity", "Less", "Mul", "Pad",
                          "RandomUniformLike", "Relu", "Reshape", "Resize", "Shape", "Slice", "Transpose", "Where"})
META_VERSION, META_CONFIG, META_NOISE, META_WEIGHTS = ("mednca_version", "mednca_config", "mednca_noise",
                                                       "mednca_weights")
_INSTALL_HINT = 'pip install "mednca[export]"'


def _require_onnx() -> tuple[Any, Any]:
    """Import (onnx, onnxruntime), or raise an :class:`ExportError` saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ExportError(f"ONNX export and the onnx runtime need onnx and onnxruntime ({exc}); "
                          f"install them with: {_INSTALL_HINT}") from None
    return onnx, onnxruntime


# -- the exported computation --------------------------------------------------------------
class ExportModule(nn.Module):
    """Inference of a :class:`MedNCA` as a traceable module (dense steps, in-graph fire masks).

    Args:
        model: The model to export; it is copied (weights frozen), not changed.
        explicit_noise: Take the fire-mask noise as inputs instead of drawing it in the graph.
    """

    def __init__(self, model: MedNCA, explicit_noise: bool = False) -> None:
        super().__init__()
        self.model = deepcopy(model).eval().requires_grad_(False)
        self.config: MedNCAConfig = model.config
        self.explicit_noise = explicit_noise

    def run_level(self, level: NCALevel, x: Tensor, noise: Tensor | None, index: int) -> Tensor:
        """Level ``index``'s S dense steps on a (B, C, h, w) state; ``noise`` is (S, B, 1, h, w) or
        None (drawn with ``torch.rand_like``)."""
        for i in range(self.config.level_steps(index)):
            u = torch.rand_like(x[:, :1]) if noise is None else noise[i]  # (B, 1, h, w)
            x = level.step_dense(x, (u < level.fire_rate).to(x.dtype))
        return x

    def forward(self, images: Tensor, noise1: Tensor | None = None, noise2: Tensor | None = None) -> Tensor:
        """(B, 1, H, W) normalised images -> (B, 1, H, W) logits (see :meth:`MedNCA.run_levels`)."""
        noise = {1: noise1, 2: noise2}
        return self.model.run_levels(images, lambda level, x, index: self.run_level(level, x, noise[index], index))[:, 1:2]


def draw_noise(config: MedNCAConfig, batch: int, height: int, width: int,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The uniform noise ``MedNCA.forward`` draws at inference, in the same order.

    ``model(images, generator=g)`` and ``ExportModule(model, True)(images, *draw_noise(..., g'))``
    see the same fire masks when ``g`` and ``g'`` start in the same state.

    Returns:
        (noise1, noise2): (S1, B, 1, H/scale, W/scale) for level 1 and (S2, B, 1, H, W) for level
        2, S1 and S2 their steps.
    """
    s = config.scale

    def draw(h: int, w: int, steps: int) -> Tensor:
        return torch.stack([torch.rand((batch, 1, h, w), generator=generator) for _ in range(steps)])

    noise1 = draw(height // s, width // s, config.level_steps(1))
    return noise1, draw(height, width, config.level_steps(2))


def _example_inputs(config: MedNCAConfig, batch: int, explicit_noise: bool) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand((batch, 1, config.image_size, config.image_size), generator=g)
    if not explicit_noise:
        return (images,)
    return (images, *draw_noise(config, batch, config.image_size, config.image_size, g))


def _metadata(config: MedNCAConfig, explicit_noise: bool, weights: str = "fp32") -> dict[str, str]:
    return {META_VERSION: __version__, META_CONFIG: json.dumps(config.to_dict()),
            META_NOISE: "input" if explicit_noise else "graph", META_WEIGHTS: weights}


# -- writing -------------------------------------------------------------------------------
def default_output(checkpoint: str | Path, format: str = "onnx") -> Path:
    """Checkpoint stem + ``.onnx``/``.pt`` beside the checkpoint (a run folder: its best one)."""
    _check_format(format)
    ckpt = resolve_checkpoint(checkpoint)
    return ckpt.with_name(ckpt.stem + FORMATS[format])


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of: {', '.join(FORMATS)}")


def export_model(model: MedNCA, path: str | Path, format: str = "onnx", *, batch_dynamic: bool = True,
                 opset: int = 17, explicit_noise: bool = False, overwrite: bool = False,
                 weights: str = "fp32") -> Path:
    """Write ``model`` as a self-contained ONNX or TorchScript file (atomically).

    Args:
        model: A MedNCA (e.g. from :func:`mednca.load_model`).
        path: Output file.
        format: ``"onnx"`` or ``"torchscript"``.
        batch_dynamic: ONNX only: a dynamic batch axis (else the batch is fixed to 1).
            Height and width are always dynamic.
        opset: ONNX opset version.
        explicit_noise: Take the fire-mask noise as inputs ``noise1``, ``noise2`` (see module doc).
        overwrite: Replace an existing file.
        weights: ONNX only: store the weights as ``"fp32"``, ``"fp16"`` or ``"int8"`` (per output
            channel); compute stays float32 (see :mod:`mednca.edge.quantize`).

    Returns:
        ``path``.

    Raises:
        ExportError: Unknown format or weight precision, fp16/int8 weights for TorchScript, a
            UNet baseline (not exportable), or onnx/onnxruntime missing for ONNX.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    _check_format(format)
    if not isinstance(model, MedNCA):
        raise ExportError(f"export supports Med-NCA models only, this is a {model.config.model!r} model; run UNet "
                          "baselines with 'mednca predict' (PyTorch runtime)")
    if weights not in WEIGHT_PRECISIONS:
        raise ExportError(f"unknown weight precision {weights!r}; choose one of: {', '.join(WEIGHT_PRECISIONS)}")
    if weights != "fp32" and format != "onnx":
        raise ExportError(f"{weights} weights are written for ONNX exports only; use --format onnx")
    if weights == "int8" and opset < 13:
        raise ExportError(f"int8 weights need ONNX opset >= 13 (per-channel DequantizeLinear), got {opset}")
    path = check_output(path, overwrite)
    module = ExportModule(model, explicit_noise)
    if format == "onnx":
        data = _onnx_bytes(module, 2 if batch_dynamic else 1, batch_dynamic, opset, weights)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    else:
        extra = {"mednca.json": json.dumps(_metadata(model.config, explicit_noise))}
        with torch.no_grad(), warnings.catch_warnings(), atomic_path(path) as tmp:
            warnings.simplefilter("ignore")  # jit.trace/save are deprecated in favour of torch.export
            example = _example_inputs(model.config, 2, explicit_noise)
            traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files=extra)
    return path


def _onnx_bytes(module: ExportModule, batch: int, batch_dynamic: bool, opset: int, weights: str = "fp32") -> bytes:
    """Trace ``module`` to ONNX (the TorchScript-based exporter), store its weights at ``weights``
    precision and add mednca's metadata."""
    onnx, _ = _require_onnx()
    names = ["images", "noise1", "noise2"] if module.explicit_noise else ["images"]
    axes = {"images": {2: "height", 3: "width"}, "logits": {2: "height", 3: "width"},
            "noise1": {3: "height_small", 4: "width_small"}, "noise2": {3: "height", 4: "width"}}
    if batch_dynamic:
        for name, dims in axes.items():
            dims[1 if name.startswith("noise") else 0] = "batch"
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and constant-folding notes
        torch.onnx.export(module, _example_inputs(module.config, batch, module.explicit_noise), buffer,
                          dynamo=False, opset_version=opset, input_names=names, output_names=["logits"],
                          dynamic_axes={k: v for k, v in axes.items() if k in names + ["logits"]})
    proto = quantize_onnx(onnx.load_from_string(buffer.getvalue()), weights)
    for key, value in _metadata(module.config, module.explicit_noise, weights).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (f"Med-NCA segmentation: images (B, 1, H, W) float32, per-slice "
                        f"{module.config.normalization} normalised to [0, 1] -> logits (B, 1, H, W); "
                        "stochastic fire masks.")
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


# -- running ONNX --------------------------------------------------------------------------
class OnnxSegmenter:
    """An exported ``.onnx`` model run by onnxruntime; usable by :mod:`mednca.pipeline.predict`.

    Args:
        path: ``.onnx`` file written by :func:`export_model`.
        threads: onnxruntime intra-op threads (None: its default).

    Attributes:
        config: The model's :class:`MedNCAConfig` (from the file's metadata).
        metadata: All of the file's metadata_props.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        onnx, self._ort = _require_onnx()
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"ONNX model {self.path} does not exist")
        try:
            proto = onnx.load(str(self.path))
        except Exception as exc:  # onnx raises DecodeError, ValueError, ... on a non-ONNX file
            raise CheckpointError(f"{self.path} is not a readable ONNX model ({exc})") from exc
        unknown = sorted({node.op_type for node in proto.graph.node} - EXPORTED_OPS)
        if unknown:
            raise CheckpointError(f"{self.path} uses operators mednca never exports ({', '.join(unknown)}); "
                                  "only models written by 'mednca export' are run")
        self.metadata = {p.key: p.value for p in proto.metadata_props}
        if META_CONFIG not in self.metadata:
            raise CheckpointError(f"{self.path} is an ONNX model but was not exported by mednca (no config)")
        self.config = parse_config(self.metadata[META_CONFIG], self.path)
        self.explicit_noise = self.metadata.get(META_NOISE) == "input"
        self._bytes = proto.SerializeToString()
        self.threads = threads
        self.session = self.new_session()

    def new_session(self, seed: int | None = None):
        """A fresh onnxruntime session; ``seed`` seeds its in-graph random numbers."""
        if seed is not None:
            self._ort.set_seed(int(seed))  # read when the session's random kernels are created
        options = self._ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        return self._ort.InferenceSession(self._bytes, options, providers=["CPUExecutionProvider"])

    def logits(self, images: Tensor, session=None, generator: torch.Generator | None = None) -> Tensor:
        """(B, 1, H, W) normalised images -> (B, 1, H, W) logits (one stochastic pass).

        ``generator`` draws the noise of an ``explicit_noise`` model (unused otherwise).
        """
        session = session or self.session
        batch = session.get_inputs()[0].shape[0]
        step = batch if isinstance(batch, int) else images.shape[0]  # a fixed-batch export
        out = []
        for s in range(0, images.shape[0], step):
            x = images[s:s + step].float()
            feeds = {"images": x.numpy()}
            if self.explicit_noise:
                n1, n2 = draw_noise(self.config, *x.shape[:1], *x.shape[2:], generator)
                feeds.update(noise1=n1.numpy(), noise2=n2.numpy())
            out.append(torch.from_numpy(session.run(["logits"], feeds)[0]))
        return torch.cat(out)

    def infer(self, ensemble: int = 1, seed: int = 0):
        """The per-slice call of :func:`mednca.pipeline.predict.predict_slices`: (N, 1, S, S) slices ->
        (mean, std) foreground probabilities over ``ensemble`` passes, like ``MedNCA.predict_proba``.
        ``seed`` makes the passes reproducible."""
        if ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {ensemble}")
        session = self.new_session(seed)
        generator = torch.Generator().manual_seed(seed)

        def run(slices: Tensor) -> tuple[Tensor, Tensor]:
            probs = torch.stack([torch.sigmoid(self.logits(slices, session, generator))
                                 for _ in range(ensemble)])  # (K, N, 1, S, S)
            std = probs.std(0, unbiased=False) if ensemble > 1 else torch.zeros_like(probs[0])
            return probs.mean(0), std

        return run


def onnx_benchmark(model: MedNCA | str | Path, *, size: int = 64, batch: int = 1, repeats: int = 20,
                   warmup: int = 3, threads: int | None = None) -> dict[str, Any]:
    """File size and onnxruntime inference time of an exported model.

    Args:
        model: A ``.onnx`` file, or a MedNCA / checkpoint / run folder (exported to a temp file).
        size: Side of the square test slices.
        batch: Slices per call.
        repeats: Timed calls (the median is reported).
        warmup: Untimed calls first.
        threads: onnxruntime intra-op threads (None: its default).

    Returns:
        ``{"file_bytes", "ms_per_slice" (median), "ms_per_slice_min", "size", "batch", "repeats",
        "threads", "onnxruntime"}``.
    """
    if isinstance(model, (str, Path)) and str(model).endswith(".onnx"):
        return _time_onnx(Path(model), size, batch, repeats, warmup, threads)
    if isinstance(model, (str, Path)):
        model = load_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(model, Path(tmp) / "model.onnx")
        return _time_onnx(path, size, batch, repeats, warmup, threads)


def _time_onnx(path: Path, size: int, batch: int, repeats: int, warmup: int,
               threads: int | None) -> dict[str, Any]:
    runner = OnnxSegmenter(path, threads)
    images = torch.rand((batch, 1, size, size), generator=torch.Generator().manual_seed(0))
    timings = time_calls(lambda: runner.logits(images), repeats, warmup=warmup)
    return {"file_bytes": path.stat().st_size, "ms_per_slice": timings.median_ms / batch,
            "ms_per_slice_min": min(timings.timed) * 1000.0 / batch, "size": size, "batch": batch,
            "repeats": repeats, "threads": threads, "onnxruntime": runner._ort.__version__}
