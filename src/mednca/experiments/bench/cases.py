"""The benchmark's workloads: the cases, their inputs and models, and their FLOP counts."""

from __future__ import annotations

import fnmatch
import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ...config import MedNCAConfig
from ...data.cases import find_cases
from ...data.slices import image_slices
from ...data.synthetic import make_case
from ...data.volumes import read_image
from ...errors import MedNCAError
from ...nn.model import MedNCA
from .options import SYNTHETIC_VOLUME_SHAPE

#: Slices per forward pass for volumes (as ``mednca.pipeline.predict.predict_volume``).
VOLUME_BATCH = 64


# -- models, inputs, FLOPs -----------------------------------------------------------------------
def bench_model(config: MedNCAConfig, seed: int = 0) -> MedNCA:
    """A MedNCA with seeded random weights, including small non-zero last layers (a fresh model's
    zero ``fc1`` would make the NCA the identity and the gradients trivial)."""
    g = torch.Generator().manual_seed(seed)
    model = MedNCA(config, generator=g)
    bound = 0.1 / math.sqrt(config.hidden)
    with torch.no_grad():
        for level in (model.level1, model.level2):
            level.fc1.weight.uniform_(-bound, bound, generator=g)
    return model


def cell_step_flops(channels: int, hidden: int) -> int:
    """FLOPs of one cell in one step: two 3x3 perception convs C->C, then 3C->hidden->C."""
    return 2 * (2 * channels * channels * 9) + 2 * (3 * channels * hidden) + 2 * (hidden * channels)


def model_flops(config: MedNCAConfig, batch: int, side: int, train: bool = False) -> int:
    """All-cell FLOPs of one forward over ``batch`` (side, side) images (inference: level 2 on the
    whole image) or, with ``train``, of one training iteration (level 2 on one patch per sample;
    counted as 3x the forward)."""
    small = side // config.scale
    cells = batch * small * small + batch * (config.patch_size ** 2 if train else side * side)
    forward = config.steps * cells * cell_step_flops(config.channels, config.hidden)
    return 3 * forward if train else forward


def load_volume(data_dir: str | Path | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The first image (by case id) of the MSD task folder ``data_dir`` read with mednca's loaders,
    or without ``data_dir`` a synthetic volume of :data:`SYNTHETIC_VOLUME_SHAPE`.

    Returns:
        The (X, Y, Z) float volume, and its description: ``source`` (``msd`` or ``synthetic``),
        ``case`` (case id or None), ``shape``, ``read_s`` (seconds to read it, or None).

    Raises:
        DataError: ``data_dir`` holds no images, or its first one is unreadable.
    """
    if data_dir is None:
        data = make_case(np.random.default_rng(0), SYNTHETIC_VOLUME_SHAPE)[0]
        return data, {"source": "synthetic", "case": None, "shape": list(data.shape), "read_s": None}
    case = find_cases(Path(data_dir), labels=None)[0]  # find_cases raises if there is none
    t0 = time.perf_counter()
    volume = read_image(case.image, case.channel)
    read_s = time.perf_counter() - t0
    return volume.data, {"source": "msd", "case": case.case_id, "shape": list(volume.data.shape),
                         "read_s": round(read_s, 4)}


# -- cases -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One benchmark workload.

    Attributes:
        name: Case name (the same in ``--quick`` mode, where only the sizes shrink).
        group: ``train``, ``infer``, ``side``, ``steps``, ``volume1t`` or ``onnx`` (the model
            exported with ``mednca export`` and run by onnxruntime; no plain counterpart).
        config: Model settings (``image_size`` = the side used, ``batch_size`` = the batch).
        source: ``synthetic`` random images, or ``volume`` (one volume's slices, :func:`load_volume`).
        compare: Run and check the plain implementation too.
        threads: Torch threads of the case (None: the run's setting).
        note: Short human description for the tables.
        weights: ``onnx`` cases: the exported weights' precision (fp32, fp16, int8).
    """

    name: str
    group: str
    config: MedNCAConfig
    source: str = "synthetic"
    compare: bool = True
    threads: int | None = None
    note: str = ""
    weights: str = "fp32"

    @property
    def train(self) -> bool:
        return self.group == "train"

    def params(self) -> dict[str, Any]:
        """The case's settings as reported in the results."""
        c = self.config
        return {"channels": c.channels, "hidden": c.hidden, "steps": c.steps, "scale": c.scale,
                "side": c.image_size, "patch": c.patch_size if self.train else None,
                "batch": c.batch_size if self.source != "volume" else None, "source": self.source,
                "threads": self.threads, "fire_rate": c.fire_rate,
                **({"weights": self.weights} if self.group == "onnx" else {})}


class _Sizes(NamedTuple):
    """The sizes of a run: the paper's, or the tiny ones of ``--quick`` (the case names stay)."""

    quick: bool
    steps: int  # per level (the paper: 64)
    c16: int  # channels of the "16 channel" and "32 channel" settings
    c32: int
    hippo: int  # image sides of the hippocampus and prostate settings
    prost: int
    hp: int  # their patch sides
    pp: int

    def config(self, preset: str, **kw: Any) -> MedNCAConfig:
        if self.quick:  # tiny: a few channels, 2-4 steps, 8-32 pixel sides
            kw = {**kw, "hidden": 8, "steps": kw.get("steps", 2)}
        return MedNCAConfig.preset(preset, **kw)

    def hippocampus(self, channels: int, **kw: Any) -> MedNCAConfig:
        return self.config("hippocampus", channels=channels, steps=self.steps, image_size=self.hippo,
                           patch_size=self.hp, **kw)

    def prostate(self, **kw: Any) -> MedNCAConfig:
        """The paper's prostate model (32 channels, hidden 128, 256² slices, 64² patches,
        gradient checkpointing unless a case turns it off)."""
        return self.config("paper-prostate", channels=self.c32, steps=self.steps, image_size=self.prost,
                           patch_size=self.pp, **kw)


def _sizes(quick: bool) -> _Sizes:
    return _Sizes(quick, 2, 4, 8, 16, 32, 8, 16) if quick else _Sizes(quick, 64, 16, 32, 64, 256, 16, 64)


def _training_cases(z: _Sizes) -> list[Case]:
    b48, b20, b4 = (2, 2, 1) if z.quick else (48, 20, 4)
    return [
        Case("train-hippocampus-c16", "train", z.hippocampus(z.c16, batch_size=b48), note="hippocampus, 16 ch"),
        Case("train-hippocampus-c32", "train", z.hippocampus(z.c32, batch_size=b48), note="hippocampus, 32 ch"),
        Case("train-prostate-c32", "train", z.prostate(batch_size=b20), note="prostate, 32 ch"),
        # The same without gradient checkpointing, as the plain implementation runs (like for like;
        # mednca then needs ~9 GB, plain ~18.5 GB, which the default memory guard may abort).
        Case("train-prostate-c32-nockpt", "train", z.prostate(batch_size=b20, grad_checkpoint=False),
             note="prostate, 32 ch, no checkpointing (as plain)"),
        # Batch 20 at 64 steps needs tens of GB of activations without gradient checkpointing (the
        # plain implementation; the memory guard then aborts it cleanly). Batch 4 is the same
        # setting at a size that fits: without checkpointing, as the plain implementation runs,
        # and with it, as the prostate preset trains (same math, about one more forward pass).
        Case("train-prostate-c32-b4", "train", z.prostate(batch_size=b4, grad_checkpoint=False),
             note="prostate, 32 ch, batch 4, no checkpointing (as plain)"),
        Case("train-prostate-c32-b4-ckpt", "train", z.prostate(batch_size=b4),
             note="prostate, 32 ch, batch 4, gradient checkpointing (the preset)"),
    ]


def _inference_cases(z: _Sizes) -> list[Case]:
    return [
        Case("infer-slice64", "infer", z.hippocampus(z.c16, batch_size=1), note="one 64² slice, 16 ch"),
        Case("infer-volume", "infer", z.hippocampus(z.c16), source="volume", note="one hippocampus volume, 16 ch"),
        Case("infer-slice256", "infer", z.prostate(batch_size=1), note="one 256² slice, 32 ch"),
    ]


def _sweep_cases(z: _Sizes) -> list[Case]:
    """Inference of one slice against image side (64..512), then against steps (16..128); the
    names keep the full sizes in ``--quick`` mode."""
    full_sides, full_steps = (64, 128, 256, 512), (16, 32, 64, 128)
    sides = (8, 12, 16, 24) if z.quick else full_sides
    step_list = (1, 2, 3, 4) if z.quick else full_steps
    base_steps, base_side = step_list[2], sides[2]
    cases = [Case(f"scale-side{name}", "side", z.config("hippocampus", channels=z.c16, steps=base_steps,
                                                        image_size=side, patch_size=min(z.hp, side), batch_size=1),
                  note=f"side {side}, {base_steps} steps")
             for side, name in zip(sides, full_sides)]
    cases += [Case(f"scale-steps{name}", "steps", z.config("hippocampus", channels=z.c16, steps=n,
                                                           image_size=base_side, patch_size=z.hp, batch_size=1),
                   note=f"side {base_side}, {n} steps")
              for n, name in zip(step_list, full_steps) if n != base_steps]  # that point is scale-side{base side}
    return cases


def _onnx_cases(z: _Sizes) -> list[Case]:
    """``infer-slice64``'s model exported with fp32, fp16 and int8 weights: only with the
    ``[export]`` extra (onnx and onnxruntime) installed."""
    if not (importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx")):
        return []
    return [Case(f"onnx-slice64{'' if weights == 'fp32' else '-' + weights}", "onnx",
                 z.hippocampus(z.c16, batch_size=1), compare=False, weights=weights,
                 note=f"one 64² slice, 16 ch, ONNX Runtime, {weights} weights")
            for weights in ("fp32", "fp16", "int8")]


def bench_cases(quick: bool = False) -> list[Case]:
    """The benchmark's cases, in run order. ``quick`` keeps the names and shrinks every size."""
    z = _sizes(quick)
    default = MedNCAConfig.preset("hippocampus", **({"image_size": 16, "steps": 2, "hidden": 8} if quick else {}))
    volume = Case("volume-default-1thread", "volume1t", default, source="volume", compare=False, threads=1,
                  note="predict_volume, hippocampus preset, 1 thread")
    return [*_training_cases(z), *_inference_cases(z), *_sweep_cases(z), *_onnx_cases(z), volume]


def select_cases(cases: Sequence[Case], only: Sequence[str] | None) -> list[Case]:
    """Cases whose name matches any pattern (a glob, or a substring; an exact case name selects
    only that case; items may hold comma-separated patterns); all without patterns.

    Raises:
        MedNCAError: The patterns match no case.
    """
    patterns = [p for item in (only or []) for p in item.split(",") if p]
    if not patterns:
        return list(cases)
    names = {c.name for c in cases}

    def match(name: str, pattern: str) -> bool:
        return name == pattern if pattern in names else fnmatch.fnmatchcase(name, pattern) or pattern in name

    chosen = [c for c in cases if any(match(c.name, p) for p in patterns)]
    if not chosen:
        raise MedNCAError(f"--only {' '.join(patterns)} matches no case; cases: {', '.join(c.name for c in cases)}")
    return chosen


def case_inputs(case: Case, data_dir: str | Path | None) -> tuple[Tensor, Tensor | None, np.ndarray | None, dict]:
    """The inputs of a case: (N, 1, S, S) images, (N, 1, S, S) labels (training cases) or None,
    the raw (X, Y, Z) volume (volume cases) or None, and a description of the volume (with
    ``slices``: N) or {}. Synthetic images are seeded, so every process sees the same ones."""
    c = case.config
    if case.source == "volume":
        volume, info = load_volume(data_dir)
        images = image_slices(volume, c.axis, c.image_size, c.interpolation, c.normalization)
        info["slices"] = images.shape[0]
        return images, None, volume, info
    g = torch.Generator().manual_seed(1234)
    images = torch.rand((c.batch_size, 1, c.image_size, c.image_size), generator=g)
    labels = (images > 0.6).float() if case.train else None
    return images, labels, None, {}


def forward_all(model: nn.Module, images: Tensor, g: torch.Generator) -> Tensor:
    """(N, 1, S, S) images -> (N, 1, S, S) logits, in chunks of :data:`VOLUME_BATCH` (as
    ``predict_volume``), fire masks drawn from ``g``."""
    return torch.cat([model(images[s:s + VOLUME_BATCH], generator=g) for s in range(0, images.shape[0], VOLUME_BATCH)])
