"""Training: batches of slices -> MedNCA -> Dice+BCE loss -> Adam, into a run folder.

A run folder holds everything needed to understand, resume and reuse a run::

    RUN/config.json        the full config           RUN/split.json   train/val/test case ids
    RUN/run.json           data folder, seed, version RUN/log.csv      one row per epoch
    RUN/checkpoints/last.safetensors  (+ last.state.safetensors: optimiser, generator, counters)
    RUN/checkpoints/best.safetensors  the best validation Dice so far

Every file is written atomically, so killing a run never loses what was already written, and
``resume=True`` continues from the last checkpoint exactly as if the run had not stopped.

``distributed=True`` (under ``torchrun``) trains one model with DistributedDataParallel over
``WORLD_SIZE`` processes:

* **Batches.** Every rank computes the same :func:`epoch_order` and takes every
  ``world_size``-th batch of it (:func:`shard_order`), so one optimizer step sees
  ``batch_size * world_size`` slices (gradients averaged by DDP) and an epoch is still one pass
  over the sampled slices, in ``n_batches // world_size`` steps. The learning-rate schedule
  counts steps and is not rescaled.
* **Randomness.** The initial weights come from ``seed`` on every rank (and DDP broadcasts rank
  0's anyway); the fire masks and patch positions of rank ``r`` come from its own generator
  seeded with :func:`rank_seed` (rank 0's equals the single-process one, so a one-process
  distributed run reproduces a plain run exactly).
* **Files.** Only rank 0 touches the run folder: it checks it, picks the split, writes config,
  log, checkpoints and runs validation; the others receive what they need (split, resume state)
  from it. ``last.state.safetensors`` holds every rank's generator state, so ``resume`` is exact
  for the same number of processes (a different number is refused).
* **Agreement.** A non-finite loss on any rank rolls back every rank; the time budget (rank 0's
  clock) and SIGINT/SIGTERM stop requests are agreed on at every batch boundary, so all ranks
  stop after the same batch.
"""

from __future__ import annotations

import csv
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import torch

from . import distributed as D
from .checkpoint import load_model, load_training_state, save_training_state
from .config import MedNCAConfig
from .data.cases import find_cases
from .data.slices import SliceData, load_slices
from .data.splits import load_split, make_split, save_split
from .errors import CheckpointError, DataError, MedNCAError, OutputExistsError
from .fsutil import atomic_path, atomic_write_text
from .losses import dice_bce_loss
from .baselines import SegmentationModel, build_model
from .version import __version__

T = TypeVar("T")

LOG_FIELDS = ("epoch", "batches", "lr", "train_loss", "val_dice", "best", "rollbacks", "elapsed_s")


class TrainingError(MedNCAError):
    """Training cannot go on (e.g. the loss stays non-finite after rolling back)."""


@dataclass
class TrainResult:
    """What a finished (or stopped) training run reports."""

    run_dir: Path
    epochs_done: int
    batches_done: int
    best_val_dice: float
    elapsed_s: float
    stopped_early: bool
    model: SegmentationModel | None = field(default=None, repr=False)  # the final (last) weights, eval mode


def epoch_order(data: SliceData, config: MedNCAConfig, seed: int, epoch: int) -> torch.Tensor:
    """Slice indices of one epoch, a deterministic function of (seed, epoch).

    Slices without foreground are kept with probability ``empty_slice_prob``.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    keep = data.foreground() | (torch.rand(len(data), generator=g) < config.empty_slice_prob)
    idx = keep.nonzero().squeeze(1)
    idx = idx[torch.randperm(len(idx), generator=g)]
    n_batches = config.batches_per_epoch or max(1, len(idx) // config.batch_size)
    need = n_batches * config.batch_size
    if need > len(idx):  # repeat the permutation to fill a fixed-length epoch
        idx = idx.repeat(math.ceil(need / len(idx)))
    return idx[:need]


def shard_order(order: torch.Tensor, batch_size: int, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s part of an epoch order: every ``world_size``-th batch, from batch ``rank``.

    All ranks get the same number of whole batches (the last ``n_batches % world_size`` batches
    are dropped; an epoch of fewer batches than ranks is repeated until every rank has one), so
    step ``k`` of all ranks together covers batches ``k*world_size ... k*world_size+world_size-1``.
    """
    batches = order.view(-1, batch_size)  # (n_batches, batch_size)
    if len(batches) < world_size:
        batches = batches.repeat(math.ceil(world_size / len(batches)), 1)
    steps = len(batches) // world_size
    return batches[:steps * world_size][rank::world_size].reshape(-1)


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s generator (fire masks, patch positions): ``seed`` on rank 0."""
    return seed + 1_000_003 * rank


def lr_at(config: MedNCAConfig, step: int) -> float:
    """Learning rate of batch ``step``: linear warm-up, then exponential decay per batch."""
    warm = min(1.0, (step + 1) / config.warmup_batches) if config.warmup_batches else 1.0
    return config.lr * warm * config.lr_gamma ** step


@torch.no_grad()
def validation_dice(model: SegmentationModel, data: SliceData, seed: int, batch_size: int = 64,
                    device: torch.device | None = None) -> float:
    """Mean per-case Dice (3D, on the resized slice grid) of hard predictions; nan if no data.

    ``device``: where the model lives, if not the CPU (batches are moved there).
    """
    if len(data) == 0:
        return float("nan")
    model.eval()
    g = torch.Generator(device or "cpu").manual_seed(seed + 7919)
    preds = []
    for s in range(0, len(data), batch_size):
        images = data.images[s:s + batch_size]
        mean, _ = model.predict_proba(images if device is None else images.to(device), model.config.val_ensemble, g)
        preds.append((mean > 0.5).cpu())
    pred = torch.cat(preds).flatten(1)
    target = data.labels.flatten(1) > 0.5
    scores = []
    for i in range(len(data.case_ids)):
        sel = data.case_index == i
        p, t = pred[sel], target[sel]
        total = p.sum() + t.sum()
        scores.append(1.0 if total == 0 else float(2 * (p & t).sum() / total))
    model.train()
    return float(sum(scores) / len(scores))


class _Snapshot:
    """An in-memory copy of model and optimiser state to roll back to after a non-finite loss."""

    def __init__(self, model: SegmentationModel, optimizer: torch.optim.Optimizer, step: int) -> None:
        self.step = step
        self.model = {k: v.clone() for k, v in model.state_dict().items()}
        opt = optimizer.state_dict()
        self.opt_state = {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
                          for i, s in opt["state"].items()}
        self.opt_groups = json.loads(json.dumps(opt["param_groups"]))

    def restore(self, model: SegmentationModel, optimizer: torch.optim.Optimizer) -> None:
        model.load_state_dict(self.model)
        optimizer.load_state_dict({"state": {i: {k: (v.clone() if torch.is_tensor(v) else v)
                                                 for k, v in s.items()} for i, s in self.opt_state.items()},
                                   "param_groups": json.loads(json.dumps(self.opt_groups))})


def _choose_split(data_dir: Path, out: Path, config: MedNCAConfig, seed: int, split_file: Path | None,
                  overwrite: bool) -> dict[str, list[str]]:
    """Check that the run may be created and pick its split (nothing is written yet)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExistsError(f"run folder {out} already exists; pass --resume to continue it "
                                "or --overwrite to start over")
    ids = [c.case_id for c in find_cases(data_dir, config.channel)]
    return load_split(split_file, ids, seed) if split_file else make_split(ids, seed)


def _write_run(data_dir: Path, out: Path, config: MedNCAConfig, seed: int, split: dict[str, list[str]],
               split_file: Path | None) -> None:
    """Create the run folder with config, split and run info (stale files of a run replaced)."""
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    for stale in ("log.csv", "checkpoints/last.safetensors", "checkpoints/last.state.safetensors",
                  "checkpoints/best.safetensors"):
        (out / stale).unlink(missing_ok=True)
    atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    save_split(split, out / "split.json")
    info = {"data": str(data_dir.resolve()), "seed": seed, "mednca_version": __version__,
            "split_file": str(split_file) if split_file else None, "torch_version": torch.__version__}
    atomic_write_text(out / "run.json", json.dumps(info, indent=2) + "\n")


def _load_part(data_dir: Path, config: MedNCAConfig, ids: list[str], what: str, log) -> SliceData:
    wanted = set(ids)
    cases = [c for c in find_cases(data_dir, config.channel) if c.case_id in wanted]
    t0 = time.perf_counter()
    data = load_slices(cases, config)
    log(f"loaded {what}: {len(cases)} cases, {len(data)} slices ({time.perf_counter() - t0:.1f} s)")
    return data


def train(data_dir: str | Path, out: str | Path, config: MedNCAConfig | None = None, *, seed: int = 0,
          split_file: str | Path | None = None, max_minutes: float | None = None,
          epochs: int | None = None, resume: bool = False, overwrite: bool = False,
          progress: bool = True, log: Callable[[str], None] = print,
          distributed: bool = False) -> TrainResult:
    """Train a Med-NCA on a dataset folder and write a run folder.

    Args:
        data_dir: MSD or nnU-Net raw task folder (``imagesTr/``, ``labelsTr/``).
        out: Run folder to create (or continue with ``resume``).
        config: Model and training settings (default: the hippocampus preset). Ignored on
            resume: the run's own ``config.json`` is used.
        seed: Seed of the split, the batch order, the fire masks and patch positions.
        split_file: JSON with ``train``/``test`` (and optional ``val``) case ids; default a seeded
            70/10/20 split.
        max_minutes: Stop after this much training wall time (checkpoints are kept).
        epochs: Override ``config.epochs``.
        resume: Continue the run in ``out`` from its last checkpoint.
        overwrite: Replace an existing run folder.
        progress: Show a progress bar (on a terminal).
        log: Where one-line status messages go.
        distributed: Train with DistributedDataParallel in a process group launched by
            ``torchrun`` (see the module docstring). Joins the group from torchrun's
            environment unless one is already initialised, and leaves it again if it joined.
            Every rank must make the same call; only rank 0 writes files and logs.
    """
    if not distributed:
        return _train(data_dir, out, config, seed, split_file, max_minutes, epochs, resume, overwrite,
                      progress, log, None)
    joined = not D.is_initialized()
    info = D.init_from_env()
    finished = False
    try:
        result = _train(data_dir, out, config, seed, split_file, max_minutes, epochs, resume, overwrite,
                        progress, log, info)
        finished = True
        return result
    finally:
        if joined:
            D.cleanup(synchronize=finished)


def _train(data_dir, out, config, seed, split_file, max_minutes, epochs, resume, overwrite, progress, log,
           info: D.DistInfo | None) -> TrainResult:
    dist_on = info is not None
    rank, world = (info.rank, info.world_size) if dist_on else (0, 1)
    main = rank == 0
    device = info.device if dist_on and info.device.type != "cpu" else None
    if not main:
        log, progress = (lambda text: None), False
    data_dir, out = Path(data_dir), Path(out)
    state_file = out / "checkpoints" / "last.state.safetensors"

    def setup() -> tuple[MedNCAConfig, int, dict[str, list[str]]]:
        nonlocal config, seed
        if resume:
            if not state_file.is_file() or not (out / "config.json").is_file():
                raise CheckpointError(f"{out} has no checkpoint to resume from (expected {state_file})")
            if _state_world_size(state_file) != world:
                raise CheckpointError(_world_mismatch(out, _state_world_size(state_file), world))
            config = MedNCAConfig.from_json(out / "config.json")
            run_info = json.loads((out / "run.json").read_text())
            seed = int(run_info["seed"])
            split = json.loads((out / "split.json").read_text())
        else:
            config = config or MedNCAConfig.preset("hippocampus")
        if epochs is not None:
            config = config.replace(epochs=epochs)
        if not resume:
            split = _choose_split(data_dir, out, config, seed, split_file, overwrite)
        return config, seed, split

    split_file = Path(split_file) if split_file else None
    config, seed, split = _on_main(setup) if dist_on else setup()

    train_data = _load_part(data_dir, config, split["train"], "train", log)
    val_data = _load_part(data_dir, config, split["val"], "val", log)
    if len(train_data) == 0:
        raise DataError("the training split has no slices")
    if not bool(train_data.foreground().any()):
        raise DataError(f"no foreground in any training label under {data_dir} "
                        f"(label={config.label}); check the label folder and --label")

    def write_and_read_state() -> tuple | None:
        # Only now that the data is known to be usable is anything written.
        if not resume:
            _write_run(data_dir, out, config, seed, split, split_file)
        elif epochs is not None:
            atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        return _read_resume_state(out, state_file, config, world) if resume and dist_on else None

    resumed = _on_main(write_and_read_state) if dist_on else write_and_read_state()

    if resume and not dist_on:
        model = load_model(out / "checkpoints" / "last.safetensors").train()
    else:
        model = build_model(config, generator=torch.Generator().manual_seed(seed)).train()
    if device is not None:
        model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    generator = torch.Generator(device or "cpu").manual_seed(rank_seed(seed, rank))
    counters = {"epoch": 0, "batch_in_epoch": 0, "step": 0, "best": -1.0, "lr_scale": 1.0, "elapsed_s": 0.0}
    if resume and not dist_on:
        counters.update(load_training_state(state_file, optimizer, generator))
    elif resume:
        weights, opt_state, saved_counters, generator_states = resumed
        model.load_state_dict(weights)
        optimizer.load_state_dict(opt_state)
        generator.set_state(generator_states[rank])
        counters.update(saved_counters)
    if resume:
        log(f"resuming {out} at epoch {counters['epoch'] + 1}, batch {counters['batch_in_epoch']}")
    shape = (f"{config.channels} channels, {config.steps} steps/level" if config.model == "mednca"
             else "whole-slice training")
    log(f"model: {config.model}, {model.num_parameters():,} parameters, {shape}")
    net: torch.nn.Module = model
    if dist_on:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[info.local_rank] if device is not None else None)
        log(f"distributed: {world} processes ({info.backend}), {config.batch_size} slices per process "
            f"and batch, {config.batch_size * world} per optimizer step")

    def save_last() -> None:  # a collective when distributed: every rank must call it
        if dist_on:
            states = D.all_gather_object(generator.get_state().cpu())
            if main:
                model.save(out / "checkpoints" / "last.safetensors", epoch=str(counters["epoch"]))
                _save_ranked_state(state_file, optimizer, states, counters)
            return
        model.save(out / "checkpoints" / "last.safetensors", epoch=str(counters["epoch"]))
        save_training_state(state_file, optimizer, generator, counters)

    budget_s = max_minutes * 60.0 if max_minutes is not None else math.inf
    base_elapsed = counters["elapsed_s"]  # training time of earlier sessions of this run
    t_start = time.perf_counter()
    stopped_early = False
    rollbacks_total = 0
    snapshot = _Snapshot(model, optimizer, counters["step"])
    bar = None
    batch_start_rng: torch.Tensor | None = None  # generator state before the batch in progress
    agreed_stop = False  # all ranks agreed to stop at this batch boundary (distributed)
    stop = _StopRequest()
    try:
        while counters["epoch"] < config.epochs and not stopped_early:
            order = epoch_order(train_data, config, seed, counters["epoch"])
            if dist_on:
                order = shard_order(order, config.batch_size, rank, world)
            n_batches = len(order) // config.batch_size
            bar = _progress(n_batches, counters, config, progress)
            losses, rollbacks = [], 0
            while counters["batch_in_epoch"] < n_batches:
                time_up = time.perf_counter() - t_start >= budget_s
                stop_requested = stop.requested
                if dist_on:  # rank 0's clock decides; any rank's signal stops all
                    time_up, stop_requested = D.any_true(time_up and main, stop_requested)
                if time_up:
                    stopped_early = True
                    break
                if stop_requested:
                    agreed_stop = True
                    raise KeyboardInterrupt
                batch_start_rng = generator.get_state()
                b = counters["batch_in_epoch"]
                idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                lr = lr_at(config, counters["step"]) * counters["lr_scale"]
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images, labels = train_data.images[idx], train_data.labels[idx]
                if device is not None:
                    images, labels = images.to(device), labels.to(device)
                logits, target = net(images, labels, generator=generator)
                loss = dice_bce_loss(logits, target)
                optimizer.zero_grad(set_to_none=True)
                finite = bool(torch.isfinite(loss))
                if dist_on:  # every rank does backward (DDP's all-reduce) or none does
                    finite = D.all_true(finite)
                if finite:
                    loss.backward()
                    # Gradients are averaged over the ranks by now, so the norm is the same on all.
                    norm = torch.nn.utils.clip_grad_norm_(
                        model.parameters(), config.grad_clip if config.grad_clip > 0 else math.inf)
                    finite = bool(torch.isfinite(norm))
                if not finite:
                    rollbacks += 1
                    rollbacks_total += 1
                    if rollbacks_total > 20:
                        raise TrainingError("the loss stayed non-finite after 20 roll-backs; "
                                            "lower --set lr=... or set grad_clip")
                    snapshot.restore(model, optimizer)
                    counters["lr_scale"] *= 0.5
                    _say(bar, log, f"non-finite loss at batch {counters['step']}: rolled back to batch "
                                   f"{snapshot.step}, learning rate scaled to x{counters['lr_scale']:g}")
                    counters["step"] += 1
                    counters["batch_in_epoch"] += 1
                    batch_start_rng = None
                    continue
                optimizer.step()
                losses.append(loss.item())
                counters["step"] += 1
                counters["batch_in_epoch"] += 1
                batch_start_rng = None  # the batch is complete
                if counters["step"] % 50 == 0:
                    snapshot = _Snapshot(model, optimizer, counters["step"])
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
            if bar is not None:
                bar.close()
            epoch_complete = counters["batch_in_epoch"] >= n_batches
            elapsed = base_elapsed + time.perf_counter() - t_start
            if epoch_complete or losses:  # the same on every rank
                train_loss = sum(losses) / max(1, len(losses))
                if dist_on:  # rank 0 validates while the others wait for its result
                    train_loss = D.all_reduce_mean(train_loss)
                    val = D.broadcast_object(validation_dice(model, val_data, seed, device=device)
                                             if main else None)
                else:
                    val = validation_dice(model, val_data, seed)
                improved = val > counters["best"] or (math.isnan(val) and epoch_complete)
                if improved:
                    counters["best"] = val if not math.isnan(val) else counters["best"]
                    if main:
                        model.save(out / "checkpoints" / "best.safetensors", epoch=str(counters["epoch"] + 1),
                                   val_dice=f"{val:.6f}")
                lr_now = lr_at(config, counters["step"]) * counters["lr_scale"]
                row = {"epoch": counters["epoch"] + 1, "batches": counters["step"], "lr": f"{lr_now:.6g}",
                       "train_loss": f"{train_loss:.6f}", "val_dice": f"{val:.6f}",
                       "best": int(improved), "rollbacks": rollbacks, "elapsed_s": f"{elapsed:.1f}"}
                if main:
                    _append_log(out / "log.csv", row)
                log(f"epoch {row['epoch']}{'' if epoch_complete else ' (partial)'}: loss {row['train_loss']} "
                    f"val Dice {val:.4f}{' (best)' if improved else ''}  [{elapsed / 60:.1f} min]")
            if epoch_complete:
                counters["epoch"] += 1
                counters["batch_in_epoch"] = 0
            counters["elapsed_s"] = elapsed
            save_last()
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        if dist_on and not agreed_stop:
            # Interrupted mid-batch on this rank only: the other ranks cannot join a save.
            log(f"interrupted: {out / 'checkpoints'} keeps the position of the last completed epoch")
            raise
        if batch_start_rng is not None:  # a batch was cut short: it will be redone on resume
            generator.set_state(batch_start_rng)
        counters["elapsed_s"] = base_elapsed + time.perf_counter() - t_start
        save_last()
        log(f"interrupted: saved the position (epoch {counters['epoch'] + 1}, batch "
            f"{counters['batch_in_epoch']}) to {out / 'checkpoints'}")
        raise
    finally:
        stop.restore()
    if stopped_early:
        log(f"time budget of {max_minutes:g} min reached; checkpoints saved in {out / 'checkpoints'}")
    return TrainResult(out, counters["epoch"], counters["step"], counters["best"],
                       counters["elapsed_s"], stopped_early, model.eval())


# -- distributed helpers -----------------------------------------------------------------------
def _on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result (or its error) to every rank."""
    result, error = None, None
    if D.is_main():
        try:
            result = fn()
        except Exception as exc:  # re-raised below on every rank
            error = exc
    shared = error if error is None or isinstance(error, MedNCAError) else \
        MedNCAError(f"rank 0 failed: {type(error).__name__}: {error}")
    result, shared = D.broadcast_object((result, shared))
    if error is not None:
        raise error
    if shared is not None:
        raise shared
    return result


def _state_world_size(state_file: Path) -> int:
    """How many processes wrote a training state (1 for single-process runs, and for a file that
    cannot be read: reading it for real reports that)."""
    from safetensors import safe_open

    try:
        with safe_open(str(state_file), framework="pt") as f:
            return int((f.metadata() or {}).get("world_size", "1"))
    except Exception:  # noqa: BLE001 - a broken file is reported by load_training_state
        return 1


def _world_mismatch(out: Path, saved: int, now: int) -> str:
    how = "without --distributed" if saved == 1 else f"with --distributed in {saved} processes"
    return (f"{out} was trained with {saved} process(es) and resumes exactly only with the same number "
            f"(this is {now}); resume it {how}, or start a new run from its checkpoint")


class _StateSink:
    """Stands in for a generator when reading a training state: keeps the state it is given."""

    state: torch.Tensor | None = None

    def set_state(self, state: torch.Tensor) -> None:
        self.state = state


def _read_resume_state(out: Path, state_file: Path, config: MedNCAConfig, world: int) -> tuple:
    """Rank 0: (weights, optimiser state, counters, per-rank generator states), all on the CPU."""
    from safetensors import safe_open

    model = load_model(out / "checkpoints" / "last.safetensors")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    sink = _StateSink()
    counters = load_training_state(state_file, optimizer, sink)
    states = [sink.state]
    with safe_open(str(state_file), framework="pt") as f:
        states += [f.get_tensor(f"generator.rank{r}") for r in range(1, world)]
    return model.state_dict(), optimizer.state_dict(), counters, states


def _save_ranked_state(path: Path, optimizer: torch.optim.Optimizer, generator_states: list[torch.Tensor],
                       counters: dict) -> None:
    """:func:`~mednca.checkpoint.save_training_state` with one generator state per rank.

    Same file format: ``generator`` is rank 0's state, ``generator.rank{r}`` rank r's, and the
    header's ``world_size`` says how many there are.
    """
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"generator": generator_states[0]}
    tensors.update({f"generator.rank{r}": s for r, s in enumerate(generator_states) if r})
    for idx, per_param in opt["state"].items():
        for key, value in per_param.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().clone().cpu()
    header = {"kind": "mednca-train-state", "param_groups": json.dumps(opt["param_groups"]),
              "state": json.dumps(counters), "world_size": str(len(generator_states))}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


class _StopRequest:
    """Turns the first SIGINT/SIGTERM into a request to stop at the next batch boundary (so the
    saved position is exact); a second signal interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _say(bar, log, text: str) -> None:
    if bar is not None:
        bar.write(text)
    else:
        log(text)


def _progress(n_batches: int, counters: dict, config: MedNCAConfig, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=n_batches, initial=counters["batch_in_epoch"], leave=False, dynamic_ncols=True,
                desc=f"epoch {counters['epoch'] + 1}/{config.epochs}", unit="batch")


def _append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
