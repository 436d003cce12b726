"""CPU benchmark: mednca against a plain PyTorch Med-NCA, in one process and one run.

    mednca bench [--quick] [--only PATTERN ...] [--json-out FILE] [--markdown-out FILE]
    python benchmarks/bench.py ...          # the same
    python -m mednca.experiments.bench --case NAME --impl mednca --json   # one measurement (used internally)

What is measured (see :func:`bench_cases` for the exact sizes):

* ``train-*``: one training iteration (forward + Dice/BCE loss + backward + Adam step) at the paper's
  hippocampus (16 and 32 channels) and prostate settings, 64 steps per level.
* ``infer-*``: inference of one 64x64 slice, one whole MSD hippocampus volume (read with mednca's own
  loaders; a synthetic 35x51x35 volume if the data is absent) and one 256x256 slice.
* ``scale-*``: inference time and memory against image side (64..512) and steps (16..128).
* ``volume-default-1thread``: ``predict_volume`` of one volume at the default ``hippocampus`` preset
  on one thread (targets: <= 1 s, <= 200 MB; reported, not asserted).
* ``onnx-slice64[-fp16|-int8]``: the ``infer-slice64`` model exported with ``mednca export`` (fp32, fp16 and
  int8 weights) and run by onnxruntime: file size and time per slice (only with the ``[export]`` extra).

Every compared case runs three fresh processes: ``check`` (mednca and :class:`PlainMedNCA` with
the same weights and the same fire masks must agree on outputs -- and for training on every
gradient -- before anything is timed), then ``mednca`` and ``plain`` (timing; the peak RSS of that
process alone). Both models draw their fire masks and patch positions from one seeded
``torch.Generator`` with the same calls in the same order, so they see identical masks.

FLOPs are counted analytically over *all* cells (:func:`cell_step_flops`), so the "effective"
rate of mednca (which runs the per-cell network on firing cells only) may exceed what it really
computes; it is set against the machine's own fp32 ``torch.mm`` rate measured in the same run.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MedNCAConfig
from ..errors import MedNCAError
from ..pipeline.losses import dice_bce_loss
from ..runtime import peak_rss_mb, retain_freed_memory
from ..nn.model import MedNCA
from ..version import __version__

#: Default location of the MSD hippocampus task (``<repo>/../shared/data``, as the benchmarks use).
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "Task04_Hippocampus"
#: Shape of the synthetic stand-in volume (a typical MSD hippocampus crop).
SYNTHETIC_VOLUME_SHAPE = (35, 51, 35)
#: Exactness tolerances: max |mednca - plain| <= RTOL * max |plain| + ATOL (outputs, and per
#: parameter for gradients).
RTOL, ATOL = 1e-4, 1e-6
GRAD_RTOL = 1e-4
#: Slices per forward pass for volumes (as ``mednca.pipeline.predict.predict_volume``).
VOLUME_BATCH = 64
EXIT_CHECK_FAILED, EXIT_MEMORY = 3, 75
IMPLS = ("mednca", "plain")


# -- the plain reference implementation ---------------------------------------------------------
class PlainLevel(nn.Module):
    """One Med-NCA level written straightforwardly, in the authors' style (BackboneNCA).

    Two 3x3 reflect-padded perception convs, concat with the state, a per-cell network as
    ``nn.Linear`` on NHWC (3C -> hidden, ReLU, hidden -> C without bias), a dense update of every
    cell multiplied by the fire mask, and channel 0 reset to the image.
    """

    def __init__(self, channels: int, hidden: int = 128, fire_rate: float = 0.5) -> None:
        super().__init__()
        self.channels = channels
        self.fire_rate = fire_rate
        self.p0 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.p1 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.fc0 = nn.Linear(3 * channels, hidden)
        self.fc1 = nn.Linear(hidden, channels, bias=False)
        with torch.no_grad():
            self.fc1.weight.zero_()

    def update(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W) proposed update of every cell."""
        y = torch.cat((x, self.p0(x), self.p1(x)), 1).permute(0, 2, 3, 1)  # (B, H, W, 3C)
        dx = self.fc1(F.relu(self.fc0(y)))  # (B, H, W, C)
        return dx.permute(0, 3, 1, 2)

    def forward(self, x: Tensor, steps: int, generator: torch.Generator | None = None) -> Tensor:
        image = x[:, :1]
        for _ in range(steps):
            b, _, h, w = x.shape
            mask = (torch.rand((b, 1, h, w), generator=generator, device=x.device) < self.fire_rate).to(x.dtype)
            x = x + self.update(x) * mask
            x = torch.cat((image, x[:, 1:]), 1)  # channel 0 stays the image
        return x


class PlainMedNCA(nn.Module):
    """A plain PyTorch Med-NCA: the reference :class:`mednca.nn.model.MedNCA` is timed against.

    Same math, same random-number calls in the same order (level-1 fire masks, the patch origins,
    level-2 fire masks), so with the same weights and the same seeded generator both give the same
    outputs up to float rounding. Load weights with :meth:`from_mednca`.
    """

    def __init__(self, config: MedNCAConfig) -> None:
        super().__init__()
        self.config = config
        self.levels = nn.ModuleList(PlainLevel(config.channels, config.hidden, config.fire_rate) for _ in range(2))

    @classmethod
    def from_mednca(cls, model: MedNCA) -> "PlainMedNCA":
        """A plain model with the weights of a :class:`MedNCA`."""
        plain = cls(model.config)
        plain.load_state_dict(mednca_to_plain_state(model.state_dict()))
        return plain

    def forward(self, images: Tensor, labels: Tensor | None = None, *,
                generator: torch.Generator | None = None) -> Tensor | tuple[Tensor, Tensor]:
        c = self.config
        s, p = c.scale, c.patch_size
        b, _, h, w = images.shape
        small = F.avg_pool2d(images, s)
        x = torch.cat((small, small.new_zeros((b, c.channels - 1, h // s, w // s))), 1)
        x = self.levels[0](x, c.steps, generator)
        x = F.interpolate(x, scale_factor=s, mode="nearest")
        x = torch.cat((images, x[:, 1:]), 1)
        if labels is None:
            return self.levels[1](x, c.steps, generator)[:, 1:2]
        rows = torch.randint(0, h - p + 1, (b,), generator=generator)
        cols = torch.randint(0, w - p + 1, (b,), generator=generator)
        if c.fg_patch_prob > 0:  # patches centred on a random foreground pixel, as MedNCA
            use_fg = torch.rand((b,), generator=generator) < c.fg_patch_prob
            pick = torch.rand((b,), generator=generator)
            for i in range(b):
                fg = torch.nonzero(labels[i, 0] > 0.5)
                if use_fg[i] and len(fg):
                    centre = fg[min(int(pick[i] * len(fg)), len(fg) - 1)]
                    rows[i] = (centre[0] - p // 2).clamp(0, h - p)
                    cols[i] = (centre[1] - p // 2).clamp(0, w - p)
        x = torch.stack([x[i, :, r:r + p, q:q + p] for i, (r, q) in enumerate(zip(rows.tolist(), cols.tolist()))])
        labels_p = torch.stack([labels[i, :, r:r + p, q:q + p]
                                for i, (r, q) in enumerate(zip(rows.tolist(), cols.tolist()))])
        return self.levels[1](x, c.steps, generator)[:, 1:2], labels_p


def plain_name(mednca_name: str) -> str:
    """``level1.fc0.weight`` (MedNCA) -> ``levels.0.fc0.weight`` (PlainMedNCA)."""
    level, layer, param = mednca_name.split(".")
    index = {"level1": 0, "level2": 1}.get(level)
    if index is None or layer not in ("p0", "p1", "fc0", "fc1"):
        raise ValueError(f"unexpected MedNCA parameter {mednca_name!r}")
    return f"levels.{index}.{layer}.{param}"


def mednca_to_plain_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map a MedNCA state dict (1x1 convs ``fc0``/``fc1``) to PlainMedNCA's (``nn.Linear``)."""
    out = {}
    for name, value in state.items():
        layer = name.split(".")[1] if name.count(".") == 2 else ""
        out[plain_name(name)] = value.flatten(1).clone() if layer in ("fc0", "fc1") and value.ndim == 4 \
            else value.clone()
    return out


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
    """All-cell FLOPs of one forward (inference: level 2 on the whole image) or, with ``train``,
    of one training iteration (level 2 on one patch per sample; counted as 3x the forward)."""
    small = side // config.scale
    cells = batch * small * small + batch * (config.patch_size ** 2 if train else side * side)
    forward = config.steps * cells * cell_step_flops(config.channels, config.hidden)
    return 3 * forward if train else forward


def load_volume(data_dir: str | Path | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The first MSD hippocampus image (by case id) read with mednca's loaders, or a synthetic
    volume of typical shape when the data is absent. Returns (volume, description)."""
    from ..data.cases import find_cases
    from ..data.volumes import read_image

    root = Path(data_dir) if data_dir else DEFAULT_DATA
    try:
        case = find_cases(root, labels=None)[0]
        t0 = time.perf_counter()
        volume = read_image(case.image, case.channel)
        read_s = time.perf_counter() - t0
        return volume.data, {"source": "msd", "case": case.case_id, "shape": list(volume.data.shape),
                             "read_s": round(read_s, 4)}
    except (MedNCAError, OSError, IndexError):
        from ..data.synthetic import make_case

        data = make_case(np.random.default_rng(0), SYNTHETIC_VOLUME_SHAPE)[0]
        return data, {"source": "synthetic", "case": None, "shape": list(data.shape), "read_s": None}


# -- cases -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One benchmark workload.

    Attributes:
        name: Case name (the same in ``--quick`` mode, where only the sizes shrink).
        group: ``train``, ``infer``, ``side``, ``steps``, ``volume1t`` or ``onnx`` (the model
            exported with ``mednca export`` and run by onnxruntime; no plain counterpart).
        config: Model settings (``image_size`` = the side used, ``batch_size`` = the batch).
        source: ``synthetic`` random images, or ``volume`` (one MSD volume's slices).
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
        c = self.config
        return {"channels": c.channels, "hidden": c.hidden, "steps": c.steps, "scale": c.scale,
                "side": c.image_size, "patch": c.patch_size if self.train else None,
                "batch": c.batch_size if self.source != "volume" else None, "source": self.source,
                "threads": self.threads, "fire_rate": c.fire_rate,
                **({"weights": self.weights} if self.group == "onnx" else {})}


def bench_cases(quick: bool = False) -> list[Case]:
    """The benchmark's cases, in run order. ``quick`` keeps the names and shrinks every size."""
    def cfg(preset: str, **kw: Any) -> MedNCAConfig:
        if quick:  # tiny: a few channels, 2-4 steps, 8-32 pixel sides
            kw = {**kw, "hidden": 8, "steps": kw.get("steps", 2)}
        return MedNCAConfig.preset(preset, **kw)

    steps = 2 if quick else 64  # the paper: 64 steps per level
    c16, c32 = (4, 8) if quick else (16, 32)
    hippo, prost = (16, 32) if quick else (64, 256)
    hp, pp = (8, 16) if quick else (16, 64)
    cases = [
        Case("train-hippocampus-c16", "train", cfg("hippocampus", channels=c16, steps=steps, image_size=hippo,
                                                  patch_size=hp, batch_size=2 if quick else 48),
             note="hippocampus, 16 ch"),
        Case("train-hippocampus-c32", "train", cfg("hippocampus", channels=c32, steps=steps, image_size=hippo,
                                                  patch_size=hp, batch_size=2 if quick else 48),
             note="hippocampus, 32 ch"),
        Case("train-prostate-c32", "train", cfg("prostate", channels=c32, steps=steps, image_size=prost,
                                               patch_size=pp, batch_size=2 if quick else 20),
             note="prostate, 32 ch"),
        # The same without gradient checkpointing, as the plain implementation runs (like for like;
        # mednca then needs ~9 GB, plain ~18.5 GB, which the default memory guard may abort).
        Case("train-prostate-c32-nockpt", "train", cfg("prostate", channels=c32, steps=steps, image_size=prost,
                                                      patch_size=pp, batch_size=2 if quick else 20,
                                                      grad_checkpoint=False),
             note="prostate, 32 ch, no checkpointing (as plain)"),
        # Batch 20 at 64 steps needs tens of GB of activations without gradient checkpointing (the
        # plain implementation; the memory guard then aborts it cleanly). Batch 4 is the same
        # setting at a size that fits: without checkpointing, as the plain implementation runs,
        # and with it, as the prostate preset trains (same math, about one more forward pass).
        Case("train-prostate-c32-b4", "train", cfg("prostate", channels=c32, steps=steps, image_size=prost,
                                                  patch_size=pp, batch_size=1 if quick else 4,
                                                  grad_checkpoint=False),
             note="prostate, 32 ch, batch 4, no checkpointing (as plain)"),
        Case("train-prostate-c32-b4-ckpt", "train", cfg("prostate", channels=c32, steps=steps, image_size=prost,
                                                       patch_size=pp, batch_size=1 if quick else 4),
             note="prostate, 32 ch, batch 4, gradient checkpointing (the preset)"),
        Case("infer-slice64", "infer", cfg("hippocampus", channels=c16, steps=steps, image_size=hippo,
                                          patch_size=hp, batch_size=1), note="one 64² slice, 16 ch"),
        Case("infer-volume", "infer", cfg("hippocampus", channels=c16, steps=steps, image_size=hippo,
                                         patch_size=hp), source="volume", note="one MSD hippocampus volume, 16 ch"),
        Case("infer-slice256", "infer", cfg("prostate", channels=c32, steps=steps, image_size=prost,
                                           patch_size=pp, batch_size=1), note="one 256² slice, 32 ch"),
    ]
    sides = (8, 12, 16, 24) if quick else (64, 128, 256, 512)
    full_sides = (64, 128, 256, 512)
    step_list = (1, 2, 3, 4) if quick else (16, 32, 64, 128)
    full_steps = (16, 32, 64, 128)
    base_steps, base_side = step_list[2], sides[2]
    for side, name in zip(sides, full_sides):
        cases.append(Case(f"scale-side{name}", "side", cfg("hippocampus", channels=c16, steps=base_steps,
                                                           image_size=side, patch_size=min(hp, side), batch_size=1),
                          note=f"side {side}, {base_steps} steps"))
    for n, name in zip(step_list, full_steps):
        if n != base_steps:  # that point is scale-side{base side}
            cases.append(Case(f"scale-steps{name}", "steps", cfg("hippocampus", channels=c16, steps=n,
                                                                 image_size=base_side, patch_size=hp, batch_size=1),
                              note=f"side {base_side}, {n} steps"))
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):  # the [export] extra
        for weights in ("fp32", "fp16", "int8"):
            cases.append(Case(f"onnx-slice64{'' if weights == 'fp32' else '-' + weights}", "onnx",
                              cfg("hippocampus", channels=c16, steps=steps, image_size=hippo, patch_size=hp,
                                  batch_size=1), compare=False, weights=weights,
                              note=f"one 64² slice, 16 ch, ONNX Runtime, {weights} weights"))
    default = MedNCAConfig.preset("hippocampus", **({"image_size": 16, "steps": 2, "hidden": 8} if quick else {}))
    cases.append(Case("volume-default-1thread", "volume1t", default, source="volume", compare=False, threads=1,
                      note="predict_volume, hippocampus preset, 1 thread"))
    return cases


def select_cases(cases: Sequence[Case], only: Sequence[str] | None) -> list[Case]:
    """Cases whose name matches any pattern (a glob, or a substring); all without patterns."""
    patterns = [p for item in (only or []) for p in item.split(",") if p]
    if not patterns:
        return list(cases)
    names = {c.name for c in cases}

    def match(name: str, pattern: str) -> bool:  # an exact case name selects only that case
        return name == pattern if pattern in names else fnmatch.fnmatchcase(name, pattern) or pattern in name

    chosen = [c for c in cases if any(match(c.name, p) for p in patterns)]
    if not chosen:
        raise MedNCAError(f"--only {' '.join(patterns)} matches no case; cases: {', '.join(c.name for c in cases)}")
    return chosen


def _inputs(case: Case, data_dir: str | Path | None) -> tuple[Tensor, Tensor | None, np.ndarray | None, dict]:
    """(images, labels or None, raw volume or None, description) of a case."""
    c = case.config
    if case.source == "volume":
        from ..data.slices import image_slices

        volume, info = load_volume(data_dir)
        images = image_slices(volume, c.axis, c.image_size, c.interpolation, c.normalization)
        info["slices"] = images.shape[0]
        return images, None, volume, info
    g = torch.Generator().manual_seed(1234)
    images = torch.rand((c.batch_size, 1, c.image_size, c.image_size), generator=g)
    labels = (images > 0.6).float() if case.train else None
    return images, labels, None, {}


def _forward_all(model: nn.Module, images: Tensor, g: torch.Generator) -> Tensor:
    """Inference over a batch in chunks of ``VOLUME_BATCH`` (as predict_volume)."""
    return torch.cat([model(images[s:s + VOLUME_BATCH], generator=g) for s in range(0, images.shape[0], VOLUME_BATCH)])


# -- exactness check -------------------------------------------------------------------------------
def _compare(a: Tensor, ref: Tensor, rtol: float, atol: float = ATOL) -> tuple[float, float, bool]:
    if not (torch.isfinite(a).all() and torch.isfinite(ref).all()):
        return math.inf, math.inf, False
    diff = (a - ref).abs().max().item() if a.numel() else 0.0
    scale = ref.abs().max().item() if ref.numel() else 0.0
    return diff, scale, diff <= rtol * scale + atol


def check_case(case: Case, images: Tensor, labels: Tensor | None, seed: int = 0) -> dict[str, Any]:
    """Run MedNCA and PlainMedNCA with the same weights and generator seed; compare outputs (and
    for training every gradient). Returns diffs and ``ok``."""
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
        worst_rel, worst_abs, grads_ok = 0.0, 0.0, True
        plain_params = dict(plain.named_parameters())
        for name, p in model.named_parameters():
            q = plain_params[plain_name(name)]
            diff, scale, ok = _compare(p.grad.reshape(q.grad.shape), q.grad, GRAD_RTOL)
            grads_ok &= ok
            worst_abs = max(worst_abs, diff)
            worst_rel = max(worst_rel, diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf))
        result.update(grad_max_abs_diff=worst_abs, grad_max_rel_diff=worst_rel, grads_ok=grads_ok, grad_rtol=GRAD_RTOL)
    else:
        model.eval()
        plain.eval()
        with torch.no_grad():
            out_m = _forward_all(model, images, g_m)
            out_p = _forward_all(plain, images, g_p)
    diff, scale, out_ok = _compare(out_m.detach(), out_p.detach(), RTOL)
    result.update(max_abs_diff=diff, max_abs_output=scale, output_ok=out_ok,
                  same_generator_state=bool(torch.equal(g_m.get_state(), g_p.get_state())))
    result["ok"] = bool(out_ok and result["same_generator_state"] and result.get("grads_ok", True)
                        and result.get("same_patches", True))
    return result


# -- one measurement (a child process) -------------------------------------------------------------
def _start_memory_watchdog(limit_mb: float) -> None:
    """Exit the process (status ``EXIT_MEMORY``) when its RSS passes ``limit_mb``: one case must
    never push the machine (and the other jobs on it) out of memory."""
    statm = Path("/proc/self/statm")
    if limit_mb <= 0 or not statm.exists():
        return
    page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20

    def watch() -> None:
        while True:
            rss = int(statm.read_text().split()[1]) * page_mb
            if rss > limit_mb:
                sys.stderr.write(f"memory limit: RSS {rss:.0f} MB > {limit_mb:.0f} MB, case aborted\n")
                sys.stderr.flush()
                os._exit(EXIT_MEMORY)
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True, name="rss-watchdog").start()


@dataclass
class Options:
    """How measurements are repeated, and where the run's inputs come from."""

    quick: bool = False
    repeats: int | None = None  # minimum timed repeats (default 3; 1 with quick)
    budget_s: float | None = None  # aim for this much timed work per measurement (default 10; 0 with quick)
    max_repeats: int = 20
    warmup: int = 1
    threads: int | None = None
    data: str | None = None
    max_rss_mb: float = 0.0  # 0: no limit
    seed: int = 0
    flush_denormal: bool = True  # torch.set_flush_denormal in every measurement (both implementations)
    retain_memory: bool = True  # mednca.runtime.retain_freed_memory in every measurement (both implementations)

    @property
    def min_repeats(self) -> int:
        return self.repeats or (1 if self.quick else 3)

    @property
    def budget(self) -> float:
        return self.budget_s if self.budget_s is not None else (0.0 if self.quick else 10.0)

    def child_args(self) -> list[str]:
        args = ["--repeats", str(self.min_repeats), "--budget", str(self.budget), "--warmup", str(self.warmup),
                "--max-rss-mb", str(self.max_rss_mb), "--seed", str(self.seed)]
        if self.quick:
            args.append("--quick")
        if self.threads:
            args += ["--threads", str(self.threads)]
        if self.data:
            args += ["--data", str(self.data)]
        if not self.flush_denormal:
            args.append("--keep-denormals")
        if not self.retain_memory:
            args.append("--release-memory")
        return args


def _time(fn: Callable[[], Any], opts: Options) -> tuple[list[float], list[float]]:
    """(warm-up times, timed repeats). Repeats: enough to fill the budget, within [min, max]."""
    warm = []
    for _ in range(opts.warmup):
        t0 = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
    n = opts.min_repeats
    if warm and opts.budget > 0:
        n = max(n, min(opts.max_repeats, int(opts.budget / max(warm[-1], 1e-6))))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return warm, times


def run_one(name: str, impl: str, opts: Options) -> dict[str, Any]:
    """One measurement of case ``name`` with ``impl`` (mednca, plain or check), in this process.

    Meant to run in a fresh process (``python -m mednca.experiments.bench --case NAME --impl IMPL --json``) so
    that the peak RSS it reports belongs to this case alone.
    """
    rss_import = peak_rss_mb()
    case = {c.name: c for c in bench_cases(opts.quick)}.get(name)
    if case is None:
        raise MedNCAError(f"unknown case {name!r}")
    if impl not in (*IMPLS, "check") or (impl != "mednca" and not case.compare):
        raise MedNCAError(f"case {name} has no implementation {impl!r}")
    threads = case.threads or opts.threads
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(opts.flush_denormal)
    if opts.retain_memory:
        retain_freed_memory()
    _start_memory_watchdog(opts.max_rss_mb)
    images, labels, volume, info = _inputs(case, opts.data)
    out: dict[str, Any] = {"case": name, "impl": impl, "threads": torch.get_num_threads(),
                           "loadavg_start": _loadavg()}
    if info:
        out["input"] = info
    if impl == "check":
        out.update(check_case(case, images, labels, opts.seed))
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)
        return out

    model: nn.Module = bench_model(case.config, opts.seed)
    if impl == "plain":
        model = PlainMedNCA.from_mednca(model)
    g = torch.Generator().manual_seed(opts.seed + 1)
    if case.train:
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=case.config.lr, betas=case.config.betas)

        def fn() -> None:
            optimizer.zero_grad(set_to_none=True)
            logits, target = model(images, labels, generator=g)
            dice_bce_loss(logits, target).backward()
            optimizer.step()
    elif case.group == "onnx":
        from ..edge.export import OnnxSegmenter, export_model

        with tempfile.TemporaryDirectory(prefix="mednca-bench-onnx-") as tmp:
            path = export_model(model, Path(tmp) / "model.onnx", weights=case.weights)
            out["file_bytes"] = path.stat().st_size
            runner = OnnxSegmenter(path, threads=torch.get_num_threads())  # holds the model's bytes

        def fn() -> None:
            runner.logits(images)
    elif case.group == "volume1t":
        from ..pipeline.predict import predict_volume

        model.eval()

        def fn() -> None:
            predict_volume(model, volume, generator=g)
    else:
        model.eval()

        def fn() -> None:
            with torch.no_grad():
                _forward_all(model, images, g)

    rss_setup = peak_rss_mb()
    warm, times = _time(fn, opts)
    out.update(median_s=statistics.median(times), min_s=min(times), times_s=[round(t, 6) for t in times],
               warmup_s=[round(t, 6) for t in warm], repeats=len(times), rss_after_import_mb=round(rss_import, 1),
               rss_after_setup_mb=round(rss_setup, 1), peak_rss_mb=round(peak_rss_mb(), 1),
               loadavg_end=_loadavg())
    return out


# -- the whole run (the parent process) ------------------------------------------------------------
def measure_matmul(n: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """fp32 ``torch.mm`` of two n x n matrices: median time and GFLOP/s over ``repeats``."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn((n, n), generator=g), torch.randn((n, n), generator=g)
    out = torch.empty((n, n))
    torch.mm(a, b, out=out)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"n": n, "repeats": repeats, "median_s": median, "gflops": 2 * n ** 3 / median / 1e9,
            "threads": torch.get_num_threads()}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _mem_available_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _run_child(name: str, impl: str, opts: Options, timeout: float | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "mednca.experiments.bench", "--case", name, "--impl", impl, "--json", *opts.child_args()]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines()
    result: dict[str, Any] | None = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
    if result is None or proc.returncode not in (0, EXIT_CHECK_FAILED):
        tail = proc.stderr.strip().splitlines()[-3:]
        memory = proc.returncode == EXIT_MEMORY
        why = "memory limit exceeded" if memory else "failed"
        result = {"case": name, "impl": impl, "error": f"{why} (exit {proc.returncode}): {' | '.join(tail)}"}
        if memory:
            result["memory_abort"] = True
    result["process_wall_s"] = round(wall, 2)
    return result


def _case_summary(case: Case, runs: dict[str, dict], matmul_gflops: float, info: dict | None) -> dict[str, Any]:
    c = case.config
    batch = info["slices"] if info and "slices" in info else c.batch_size
    flops = model_flops(c, batch, c.image_size, train=case.train)
    summary: dict[str, Any] = {"name": case.name, "group": case.group, "note": case.note, "params": case.params(),
                               "flops": flops}
    if info:
        summary["input"] = info
    if "check" in runs:
        summary["check"] = runs["check"]
    for impl in IMPLS:
        run = runs.get(impl)
        if run is None:
            continue
        if "median_s" in run:
            rate = flops / run["median_s"] / 1e9
            run["effective_gflops"] = rate
            run["pct_of_matmul"] = 100 * rate / matmul_gflops if matmul_gflops else None
        summary[impl] = run
    m, p = summary.get("mednca", {}), summary.get("plain", {})
    if "median_s" in m and "median_s" in p:
        summary["speedup"] = p["median_s"] / m["median_s"]
        summary["memory_ratio"] = p["peak_rss_mb"] / m["peak_rss_mb"]
    if case.group == "volume1t" and "median_s" in m:
        summary["targets"] = {"time_s": 1.0, "peak_rss_mb": 200.0, "time_ok": m["median_s"] <= 1.0,
                              "peak_rss_ok": m["peak_rss_mb"] <= 200.0,
                              "rss_above_import_mb": round(m["peak_rss_mb"] - m["rss_after_import_mb"], 1)}
    return summary


def _geomean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _ratios(cases: Sequence[dict]) -> dict[str, Any]:
    def speedups(groups: tuple[str, ...]) -> dict[str, float]:
        return {c["name"]: c["speedup"] for c in cases if c["group"] in groups and "speedup" in c}

    train, infer, scale = speedups(("train",)), speedups(("infer",)), speedups(("side", "steps"))
    # the matmul rate is measured with the run's threads: the one-thread case is left out
    pct = {c["name"]: {impl: c[impl].get("pct_of_matmul") for impl in IMPLS if impl in c and "median_s" in c[impl]}
           for c in cases if c["group"] != "volume1t" and any(impl in c for impl in IMPLS)}
    return {"train_speedup": train, "infer_speedup": infer, "scale_speedup": scale,
            "train_speedup_geomean": _geomean(list(train.values())),
            "infer_speedup_geomean": _geomean(list(infer.values())), "effective_pct_of_matmul": pct}


def run_benchmark(opts: Options, only: Sequence[str] | None = None, json_out: str | Path | None = None,
                  markdown_out: str | Path | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the selected cases, each measurement in a fresh process; write JSON and Markdown.

    Returns the results dict (also written to ``json_out`` after every case, so a long run that
    is stopped keeps what it measured).
    """
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    cases = select_cases(bench_cases(opts.quick), only)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if not opts.max_rss_mb:
        avail = _mem_available_mb()
        opts.max_rss_mb = round(0.8 * avail) if avail else 0.0
    t_start = time.perf_counter()
    n_mm, r_mm = (256, 3) if opts.quick else (2048, 7)
    matmul = measure_matmul(n_mm, r_mm)
    log(f"matmul {n_mm}x{n_mm} fp32: {matmul['gflops']:.1f} GFLOP/s ({matmul['threads']} threads)")
    results: dict[str, Any] = {
        "meta": {"mednca_version": __version__, "torch_version": torch.__version__, "python": platform.python_version(),
                 "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                 "quick": opts.quick, "min_repeats": opts.min_repeats, "budget_s": opts.budget,
                 "warmup": opts.warmup, "max_rss_mb": opts.max_rss_mb, "seed": opts.seed,
                 "flush_denormal": opts.flush_denormal, "retain_memory": opts.retain_memory,
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_start": _loadavg(),
                 "tolerance": {"rtol": RTOL, "atol": ATOL, "grad_rtol": GRAD_RTOL}},
        "matmul": matmul, "cases": [], "ratios": {}}
    failures, memory_aborts = [], []
    for i, case in enumerate(cases, 1):
        runs: dict[str, dict] = {}
        impls = ["check", *IMPLS] if case.compare else ["mednca"]
        for impl in impls:
            run = _run_child(case.name, impl, opts)
            runs[impl] = run
            if "error" in run:
                log(f"[{i}/{len(cases)}] {case.name} {impl}: {run['error']}")
                if run.get("memory_abort"):
                    # Too big for this machine: not a failure. A case whose check does not fit is
                    # still timed per implementation (each may fit alone), and marked unchecked.
                    memory_aborts.append(f"{case.name}/{impl}")
                    continue
                failures.append(f"{case.name}/{impl}: {run['error']}")
                if impl == "check":
                    break
                continue
            if impl == "check":
                log(f"[{i}/{len(cases)}] {case.name} check: {'ok' if run['ok'] else 'FAILED'}, max |Δ| output "
                    f"{run['max_abs_diff']:.2e} (max |out| {run['max_abs_output']:.2e})"
                    + (f", max rel Δ grad {run['grad_max_rel_diff']:.2e}" if "grad_max_rel_diff" in run else ""))
                if not run["ok"]:
                    failures.append(f"{case.name}: mednca and plain outputs disagree ({json.dumps(run)})")
                    break  # never time a case whose outputs disagree
            else:
                log(f"[{i}/{len(cases)}] {case.name} {impl}: {run['median_s'] * 1e3:.1f} ms (median of "
                    f"{run['repeats']}), peak RSS {run['peak_rss_mb']:.0f} MB")
        info = next((r["input"] for r in runs.values() if "input" in r), None)
        results["cases"].append(_case_summary(case, runs, matmul["gflops"], info))
        results["ratios"] = _ratios(results["cases"])
        results["meta"]["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        if json_out:
            _write(json_out, json.dumps(results, indent=2) + "\n")
    results["meta"]["loadavg_end"] = _loadavg()
    results["failures"] = failures
    results["memory_aborts"] = memory_aborts
    if json_out:
        _write(json_out, json.dumps(results, indent=2) + "\n")
    if markdown_out:
        _write(markdown_out, markdown(results))
    return results


def _write(path: str | Path, text: str) -> None:
    from ..fsutil import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


# -- Markdown --------------------------------------------------------------------------------------
def _f(value: Any, fmt: str = ".3g", missing: str = "–") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, fmt)


def _x(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def _ms(run: dict | None) -> str:
    if not run:
        return "–"
    if "error" in run:
        return "mem-guard" if run.get("memory_abort") else "error"
    return _f(run.get("median_s", None) and run["median_s"] * 1e3, ".4g")


def _delta(check: dict) -> str:
    if check.get("memory_abort"):
        return "unchecked (mem)"
    if "error" in check:
        return "error"
    text = _f(check.get("max_abs_diff"), ".1e")
    return text if check.get("ok", True) else f"{text} FAILED"


def _config_text(case: dict) -> str:
    p = case["params"]
    text = f"C{p['channels']} h{p['hidden']} S{p['steps']} {p['side']}²"
    if p["patch"]:
        text += f" patch {p['patch']}²"
    if case.get("input", {}).get("slices"):
        text += f" ×{case['input']['slices']} slices"
    elif p["batch"]:
        text += f" b{p['batch']}"
    return text


def _rate(run: dict | None) -> str:
    if not run or "effective_gflops" not in run:
        return "–"
    return f"{run['effective_gflops']:.1f} ({_f(run['pct_of_matmul'], '.0f')} %)"


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables (for benchmarks/RESULTS.md)."""
    meta, mm = results["meta"], results["matmul"]
    lines = [f"### mednca {meta['mednca_version']} vs plain PyTorch Med-NCA"
             + (" (--quick smoke run, not a measurement)" if meta["quick"] else ""), "",
             f"torch {meta['torch_version']}, {meta['threads']} threads, {meta['cpu']} ({meta['cpu_count']} cores), "
             f"{meta['started']}, load average at start {meta['loadavg_start']}. fp32 `torch.mm` "
             f"{mm['n']}×{mm['n']}: **{mm['gflops']:.1f} GFLOP/s** (median of {mm['repeats']}). Times are medians "
             f"after {meta['warmup']} warm-up; each measurement in a fresh process (peak RSS = that process, "
             "torch included). GFLOP/s = all-cell FLOPs / time (training = 3× forward), % of the matmul rate in "
             "brackets. Δ = max |mednca − plain| over the output (same weights, same fire masks). Denormal floats "
             + ("flushed to zero in both implementations (as mednca's commands do)."
                if meta.get("flush_denormal", False) else "kept (--keep-denormals).")
             + (" Freed memory kept by malloc for reuse in both implementations (as mednca's commands do)."
                if meta.get("retain_memory", False) else ""), ""]
    cases = results["cases"]

    def table(title: str, rows: list[dict], grads: bool) -> None:
        if not rows:
            return
        head = "| case | config | mednca ms | plain ms | speed-up | mednca GFLOP/s | plain GFLOP/s | mednca peak MB " \
               "| plain peak MB | Δ output |" + (" rel Δ grad |" if grads else "")
        lines.extend([f"#### {title}", "", head, "|" + "---|" * (head.count("|") - 1)])
        for c in rows:
            m, p, chk = c.get("mednca"), c.get("plain"), c.get("check", {})
            row = (f"| {c['name']} | {_config_text(c)} | {_ms(m)} | {_ms(p)} | {_x(c.get('speedup'))} | "
                   f"{_rate(m)} | {_rate(p)} | {_f(m and m.get('peak_rss_mb'), '.0f')} | "
                   f"{_f(p and p.get('peak_rss_mb'), '.0f')} | {_delta(chk)} |")
            if grads:
                row += f" {_f(chk.get('grad_max_rel_diff'), '.1e')} |"
            lines.append(row)
        lines.append("")

    table("Training iteration (forward + backward + Adam step)", [c for c in cases if c["group"] == "train"], True)
    table("Inference", [c for c in cases if c["group"] == "infer"], False)

    def sweep(title: str, key: str, rows: list[dict]) -> None:
        rows = sorted(rows, key=lambda c: c["params"][key])
        if not rows:
            return
        lines.extend([f"#### {title}", "", f"| {key} | mednca ms | plain ms | speed-up | mednca peak MB | plain peak MB "
                      "| mednca GFLOP/s | plain GFLOP/s |", "|---|---|---|---|---|---|---|---|"])
        for c in rows:
            m, p = c.get("mednca"), c.get("plain")
            lines.append(f"| {c['params'][key]} | {_ms(m)} | {_ms(p)} | {_x(c.get('speedup'))} | "
                         f"{_f(m and m.get('peak_rss_mb'), '.0f')} | {_f(p and p.get('peak_rss_mb'), '.0f')} | "
                         f"{_rate(m)} | {_rate(p)} |")
        lines.append("")

    side_rows = [c for c in cases if c["group"] == "side"]
    steps_rows = [c for c in cases if c["group"] == "steps"]
    if side_rows:
        base = side_rows[0]["params"]
        sweep(f"Inference vs image side (one slice, C{base['channels']}, {base['steps']} steps per level)", "side",
              side_rows)
    if steps_rows:
        base_side = steps_rows[0]["params"]["side"]
        steps_rows += [c for c in side_rows if c["params"]["side"] == base_side]
        base = steps_rows[0]["params"]
        sweep(f"Inference vs steps per level (one {base_side}² slice, C{base['channels']})", "steps", steps_rows)

    onnx_rows = [c for c in cases if c["group"] == "onnx"]
    if onnx_rows:
        torch_run = next((c.get("mednca") for c in cases if c["name"] == "infer-slice64"), None)
        lines.extend(["#### ONNX Runtime (`mednca export`: dense steps, fire masks drawn in the graph)", "",
                      "| case | config | weights | file KiB | onnxruntime ms | mednca (PyTorch) ms, `infer-slice64` "
                      "| peak RSS MB |", "|---|---|---|---|---|---|---|"])
        for c in onnx_rows:
            m = c.get("mednca", {})
            size = m.get("file_bytes")
            lines.append(f"| {c['name']} | {_config_text(c)} | {c['params'].get('weights', 'fp32')} | "
                         f"{_f(size and size / 1024, '.0f')} | {_ms(m)} | {_ms(torch_run)} | "
                         f"{_f(m.get('peak_rss_mb'), '.0f')} |")
        lines.append("")

    for c in (c for c in cases if c["group"] == "volume1t"):
        m, t, inp = c.get("mednca", {}), c.get("targets", {}), c.get("input", {})
        lines.extend([f"#### One hippocampus volume, default preset, 1 thread (`{c['name']}`)", "",
                      "| volume | config | time s (target ≤ 1) | peak RSS MB (target ≤ 200) | RSS after import MB "
                      "| above import MB |", "|---|---|---|---|---|---|"])
        vol = f"{inp.get('case') or 'synthetic'} {'×'.join(map(str, inp.get('shape', [])))}"
        if "median_s" in m:
            lines.append(f"| {vol} | {_config_text(c)} | {m['median_s']:.3f} {'✓' if t['time_ok'] else '✗'} | "
                         f"{m['peak_rss_mb']:.0f} {'✓' if t['peak_rss_ok'] else '✗'} | {m['rss_after_import_mb']:.0f} | "
                         f"{t['rss_above_import_mb']:.0f} |")
        else:
            lines.append(f"| {vol} | {_config_text(c)} | {_ms(m)} | – | – | – |")
        lines.append("")

    r = results.get("ratios", {})
    lines.extend(["#### Ratios (same run)", "",
                  "- training speed-up of mednca over plain: "
                  + (", ".join(f"{k} {v:.2f}×" for k, v in r.get("train_speedup", {}).items()) or "–")
                  + f" (geometric mean {_f(r.get('train_speedup_geomean'), '.2f')}×)",
                  "- inference speed-up: "
                  + (", ".join(f"{k} {v:.2f}×" for k, v in r.get("infer_speedup", {}).items()) or "–")
                  + f" (geometric mean {_f(r.get('infer_speedup_geomean'), '.2f')}×)",
                  "- inference speed-up in the sweeps: "
                  + (", ".join(f"{k} {v:.2f}×" for k, v in r.get("scale_speedup", {}).items()) or "–"),
                  "- effective rate as % of the matmul rate (mednca / plain): "
                  + (", ".join(f"{k} {_f(v.get('mednca'), '.0f')} / {_f(v.get('plain'), '.0f')} %"
                               for k, v in r.get("effective_pct_of_matmul", {}).items()) or "–"), ""])
    if results.get("memory_aborts"):
        lines.extend([f"mem-guard: aborted at the memory limit ({meta['max_rss_mb'] / 1024:.1f} GB): "
                      + ", ".join(results["memory_aborts"]) + ".", ""])
    if results.get("failures"):
        lines.extend(["**Failures:**", ""] + [f"- {f}" for f in results["failures"]] + [""])
    return "\n".join(lines)


# -- command line ----------------------------------------------------------------------------------
def options_from_args(args: argparse.Namespace) -> Options:
    gb = getattr(args, "max_rss_gb", None)
    return Options(quick=bool(getattr(args, "quick", False)), repeats=getattr(args, "repeats", None),
                   budget_s=getattr(args, "budget", None), warmup=getattr(args, "warmup", 1) or 0,
                   threads=getattr(args, "threads", None), data=getattr(args, "data", None),
                   max_rss_mb=gb * 1024 if gb else 0.0,
                   flush_denormal=not getattr(args, "keep_denormals", False),
                   retain_memory=not getattr(args, "release_memory", False))


def run_cli(args: argparse.Namespace) -> int:
    """``mednca bench``: run, print the Markdown tables, write the files. Status 1 on a failed
    exactness check or a failed measurement."""
    opts = options_from_args(args)
    if getattr(args, "list", False):
        for case in bench_cases(opts.quick):
            print(f"{case.name:24s} {case.group:8s} {case.note}")
        return 0
    results = run_benchmark(opts, getattr(args, "only", None), getattr(args, "json_out", None),
                            getattr(args, "markdown_out", None))
    print(markdown(results), flush=True)
    if results["failures"]:
        raise MedNCAError(f"{len(results['failures'])} measurement(s) failed: " + "; ".join(results["failures"])[:2000])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mednca.experiments.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from ..cli.experiments import add_bench_arguments

    add_bench_arguments(parser)
    internal = parser.add_argument_group("one measurement (run by the benchmark in a fresh process)")
    internal.add_argument("--case", help="measure this case only, in this process")
    internal.add_argument("--impl", default="mednca", choices=(*IMPLS, "check"))
    internal.add_argument("--json", action="store_true", help="print the measurement as one JSON line")
    internal.add_argument("--max-rss-mb", type=float, default=0.0, help=argparse.SUPPRESS)
    internal.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.case:
            opts = options_from_args(args)
            opts.max_rss_mb, opts.seed = args.max_rss_mb or opts.max_rss_mb, args.seed
            result = run_one(args.case, args.impl, opts)
            print(json.dumps(result) if args.json else json.dumps(result, indent=2), flush=True)
            return EXIT_CHECK_FAILED if result.get("ok") is False else 0
        return run_cli(args)
    except MedNCAError as exc:
        print(f"mednca: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
