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

import contextlib
import csv
import dataclasses
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import read_model_file, save_training_state
from ..config import MedNCAConfig
from ..data.runfolder import RunFolder
from ..data.slices import SliceData, load_slices
from ..fsutil import atomic_path
from ..errors import CheckpointError, DataError, TrainingError
from ..nn.base import SegmentationModel
from ..nn.build import build_model
from . import distributed as D
from .augment import augment_batch
from .batches import cooldown_factor, epoch_order, lr_at, rank_seed, shard_order
from .ema import WeightAverage
from .losses import dice_bce_loss
from .setup import Plan, check_cases, prepare, split_cases, write_or_read

LOG_FIELDS = ("epoch", "batches", "lr", "train_loss", "val_dice", "best", "rollbacks", "elapsed_s")
#: Roll-backs after a non-finite loss before training gives up.
MAX_ROLLBACKS = 20
#: Batches between the in-memory snapshots a non-finite loss rolls back to.
SNAPSHOT_EVERY = 50
#: Validations (one every ``config.val_every`` epochs) without any predicted foreground (while
#: the labels have some) after which a model that had learned counts as collapsed, and restarts
#: from its best checkpoint.
COLLAPSE_EPOCHS = 3
#: Restarts after a collapse before training gives up.
MAX_COLLAPSES = 3
#: Validations without any predicted foreground after which a model that never learned is warned about.
NO_START_EPOCHS = 10


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


@dataclass
class RunState:
    """Where the training loop is: saved with every checkpoint, restored by ``resume``.

    Attributes:
        epoch: Completed epochs.
        batch_in_epoch: Completed batches of the current epoch.
        step: Optimizer steps so far (batches, roll-backs included): the lr schedule's clock.
        best: Best validation Dice so far (-1 before the first validation).
        lr_scale: Learning-rate factor, halved at every roll-back.
        elapsed_s: Training wall time of all sessions of this run.
        epoch_loss_sum, epoch_losses, epoch_rollbacks: The current epoch's summed batch loss,
            its number of completed batches and its roll-backs, so that an epoch interrupted and
            resumed logs the same row as one that ran straight.
        empty_epochs: Consecutive validations without any foreground predicted.
        collapses: Restarts from the best checkpoint after a collapse to background.
    """

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    best: float = -1.0
    lr_scale: float = 1.0
    elapsed_s: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_losses: int = 0
    epoch_rollbacks: int = 0
    empty_epochs: int = 0
    collapses: int = 0

    @classmethod
    def from_dict(cls, data: dict, source: str | Path = "training state") -> "RunState":
        """The state saved as ``data`` (missing fields take their defaults; a state written by
        an older mednca lacks the ``epoch_*`` ones)."""
        values = {}
        for f in dataclasses.fields(cls):
            value = data.get(f.name, f.default) if isinstance(data, dict) else None
            kind = int if f.type == "int" else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                raise CheckpointError(f"{source}: the counter {f.name} is {value!r}, not a number; the state is damaged")
            values[f.name] = kind(value)
        if min(values["epoch"], values["batch_in_epoch"], values["step"]) < 0:
            raise CheckpointError(f"{source}: negative counters; the state is damaged")
        return cls(**values)


def validation_dice(model: SegmentationModel, data: SliceData, seed: int, batch_size: int = 64,
                    device: torch.device | None = None) -> float:
    """Mean per-case Dice (3D, on the resized slice grid) of hard predictions; nan if no data.

    ``device``: where the model lives, if not the CPU (batches are moved there).
    """
    return validate(model, data, seed, batch_size, device)[0]


@torch.no_grad()
def validate(model: SegmentationModel, data: SliceData, seed: int, batch_size: int = 64,
             device: torch.device | None = None) -> tuple[float, int]:
    """(:func:`validation_dice`, the number of pixels predicted as foreground over all slices)."""
    if len(data) == 0:
        return float("nan"), 0
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
    return float(sum(scores) / len(scores)), int(pred.sum())


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
    info = None
    joined = distributed and not D.is_initialized()
    if distributed:
        info = D.init_from_env()
    finished = False
    try:
        plan = Plan(Path(data_dir), RunFolder(out), config, seed, Path(split_file) if split_file else None,
                    epochs, resume, overwrite)
        result = Trainer(plan, info, progress, log).run(max_minutes)
        finished = True
        return result
    finally:
        if joined:
            D.cleanup(synchronize=finished)


class Trainer:
    """One training run: set up once (run folder, data, model, resume), then a flat loop over
    batches (:meth:`_train_batch`) and epochs (:meth:`_end_epoch`), saving with :meth:`_save_last`.

    Every rank of a distributed run makes the same calls; the collectives of
    :mod:`mednca.pipeline.distributed` are no-ops in a single process, so the loop has no
    special case for it. Only rank 0 (``self.main``) writes files and logs.
    """

    def __init__(self, plan: Plan, info: D.DistInfo | None, progress: bool, log: Callable[[str], None]) -> None:
        self.info = info
        self.rank, self.world = (info.rank, info.world_size) if info else (0, 1)
        self.main = self.rank == 0
        self.device = info.device if info and info.device.type != "cpu" else None
        self.log = log if self.main else (lambda text: None)
        self.progress = progress and self.main
        self.run_folder = plan.run
        self.config, self.seed, split = D.on_main(lambda: prepare(plan, self.world))
        self.train_data = self._load(plan.data_dir, split["train"], "train")
        self.val_data = self._load(plan.data_dir, split["val"], "val")
        if len(self.train_data) == 0:
            raise DataError("the training split has no slices")
        self.val_has_foreground = bool(self.val_data.foreground().any())
        if not bool(self.train_data.foreground().any()):
            raise DataError(f"no foreground in any training label under {plan.data_dir} "
                            f"(label={self.config.label}); check the label folder and --label")
        D.on_main(lambda: check_cases(plan.data_dir, self.config, split["test"], "test"))
        self._build()
        # Only now that the data is known to be usable and the model built is anything written.
        resumed = D.on_main(lambda: write_or_read(plan, self.config, self.seed, split))
        if resumed is not None:
            self._restore(*resumed)
        steps = (f"{self.config.steps} steps/level" if self.config.level_steps(1) == self.config.steps else
                 f"{self.config.level_steps(1)} + {self.config.steps} steps (levels 1 + 2)")
        shape = (f"{self.config.channels} channels, {steps}"
                 if self.config.model == "mednca" else "whole-slice training")
        self.log(f"model: {self.config.model}, {self.model.num_parameters():,} parameters, {shape}")
        self._wrap()

    def _load(self, data_dir: Path, ids: list[str], what: str) -> SliceData:
        cases = split_cases(data_dir, self.config, ids, what)
        t0 = time.perf_counter()
        data = load_slices(cases, self.config)
        self.log(f"loaded {what}: {len(cases)} cases, {len(data)} slices ({time.perf_counter() - t0:.1f} s)")
        return data

    def _build(self) -> None:
        """Model, optimiser, generator and loop state, fresh from the seed."""
        config = self.config
        self.model = build_model(config, generator=torch.Generator().manual_seed(self.seed)).train()
        if self.device is not None:
            self.model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=config.betas)
        self.generator = torch.Generator(self.device or "cpu").manual_seed(rank_seed(self.seed, self.rank))
        self.ema = WeightAverage(self.model, config.ema) if config.ema > 0 else None
        self.state = RunState()

    def _restore(self, weights: dict, optimizer_state: dict, counters: dict, generator_states: list,
                 ema_state: dict | None) -> None:
        """Everything as saved in the run's training state."""
        source = self.run_folder.last_state
        try:
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(optimizer_state)
            self.generator.set_state(generator_states[self.rank])
            if self.ema is not None:
                if ema_state is None:
                    raise KeyError("the state has no averaged weights (ema)")
                self.ema.load_state_dict(ema_state)
        except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{source} does not fit the run's model and optimiser ({first}); "
                                  "start a new run, or resume from an intact copy") from exc
        self.state = RunState.from_dict(counters, source)
        if self.main:  # a crash after the state's commit may have left an older last.safetensors
            with self._averaged() as model:
                model.save(self.run_folder.last, epoch=str(self.state.epoch))
        self.log(f"resuming {self.run_folder.path} at epoch {self.state.epoch + 1}, batch {self.state.batch_in_epoch}")

    def _wrap(self) -> None:
        """The module the loop calls: the model, or DDP around it in a distributed run."""
        config = self.config
        self.net: torch.nn.Module = self.model
        if self.info is not None:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model, device_ids=[self.info.local_rank]
                                               if self.device is not None else None)
            self.log(f"distributed: {self.world} processes ({self.info.backend}), {config.batch_size} slices "
                     f"per process and batch, {config.batch_size * self.world} per optimizer step")

    # -- the loop ------------------------------------------------------------------------------
    def run(self, max_minutes: float | None) -> TrainResult:
        """Train until ``config.epochs`` or the time budget; save the position on an interrupt."""
        config, state = self.config, self.state
        budget_s = max_minutes * 60.0 if max_minutes is not None else math.inf
        self.base_elapsed = state.elapsed_s  # training time of earlier sessions of this run
        self.t_start = time.perf_counter()
        self.snapshot = _Snapshot(self.model, self.optimizer, state.step, self.ema)
        self.rollbacks_total = 0
        stopped_early = went_on = False
        stop = _StopRequest()
        self.batch_start_rng: torch.Tensor | None = None  # generator state before the batch in progress
        self.lr_factor = 1.0  # config.lr_cooldown's factor of the batch in progress
        self.bar = None  # the current epoch's progress bar (on a terminal)
        try:
            while state.epoch < config.epochs and not stopped_early:
                order = shard_order(epoch_order(self.train_data, config, self.seed, state.epoch),
                                    config.batch_size, self.rank, self.world)
                n_batches = len(order) // config.batch_size
                self.bar = _progress_bar(n_batches, state, config, self.progress)
                while state.batch_in_epoch < n_batches:
                    # rank 0's clock decides; any rank's signal stops all. At an epoch's first
                    # batch the end of the epoch before has just decided to go on (so that the
                    # last epoch of a run is always the validated one).
                    decided = state.batch_in_epoch == 0 and went_on
                    time_up, stop_requested = D.any_true(
                        not decided and time.perf_counter() - self.t_start >= budget_s and self.main,
                        stop.requested)
                    if time_up:
                        stopped_early = True
                        break
                    if stop_requested:
                        raise _AgreedStop
                    b = state.batch_in_epoch
                    self.lr_factor = self._cooldown(budget_s, (state.epoch + b / n_batches) / config.epochs)
                    self._train_batch(order[b * config.batch_size:(b + 1) * config.batch_size])
                self._close_bar()
                complete = state.batch_in_epoch >= n_batches
                if complete:  # the budget may end right here: then this epoch is the last, validated
                    stopped_early = D.any_true(time.perf_counter() - self.t_start >= budget_s and self.main)[0]
                self._end_epoch(complete, last=stopped_early or state.epoch + 1 >= config.epochs)
                went_on = complete and not stopped_early
        except (KeyboardInterrupt, _AgreedStop) as exc:
            self._interrupted(agreed=isinstance(exc, _AgreedStop))
            raise KeyboardInterrupt from None
        finally:
            stop.restore()
        if stopped_early:
            self.log(f"time budget of {max_minutes:g} min reached; checkpoints saved in "
                     f"{self.run_folder.checkpoints}")
        if self.ema is not None:  # the model to use is the averaged one
            self.model.load_state_dict({**self.model.state_dict(), **self.ema.state_dict()})
        return TrainResult(self.run_folder.path, state.epoch, state.step, state.best, state.elapsed_s,
                           stopped_early, self.model.eval())

    def _train_batch(self, idx: torch.Tensor) -> None:
        """One optimizer step on the slices ``idx`` (or a roll-back if its loss is not finite)."""
        config, state = self.config, self.state
        self.batch_start_rng = self.generator.get_state()
        lr = self._lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images, labels = self.train_data.images[idx], self.train_data.labels[idx]
        if self.device is not None:
            images, labels = images.to(self.device), labels.to(self.device)
        images, labels = augment_batch(images, labels, config.augment, self.generator,
                                       max_scale=config.augment_scale, max_log_gamma=config.augment_gamma,
                                       max_log_contrast=config.augment_contrast)
        logits, target, *coarse = self.net(images, labels, generator=self.generator)
        loss = dice_bce_loss(logits, target)
        if coarse:  # level 1's own segmentation over its whole grid (config.coarse_loss)
            loss = loss + config.coarse_loss * dice_bce_loss(*coarse)
        self.optimizer.zero_grad(set_to_none=True)
        finite = D.all_true(bool(torch.isfinite(loss)))  # every rank does backward (DDP) or none does
        if finite:
            loss.backward()
            # Gradients are averaged over the ranks by now, so the norm is the same on all.
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                  config.grad_clip if config.grad_clip > 0 else math.inf)
            finite = bool(torch.isfinite(norm))
        state.step += 1
        state.batch_in_epoch += 1
        self.batch_start_rng = None  # the batch is complete
        if not finite:
            state.epoch_rollbacks += 1
            self._roll_back()
            return
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(state.step - 1)
        if state.step % SNAPSHOT_EVERY == 0:
            self.snapshot = _Snapshot(self.model, self.optimizer, state.step, self.ema)
        value = loss.item()
        state.epoch_loss_sum += value
        state.epoch_losses += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")

    def _lr(self) -> float:
        """Learning rate of the next batch: the schedule, the roll-backs' and the cooldown's factors."""
        return lr_at(self.config, self.state.step) * self.state.lr_scale * self.lr_factor

    def _cooldown(self, budget_s: float, epoch_progress: float) -> float:
        """``config.lr_cooldown``'s learning-rate factor for the next batch: by how far this
        session is through its time budget (rank 0's clock) or the run through its epochs
        (``epoch_progress``, 0 to 1), whichever is further."""
        if self.config.lr_cooldown == 0:
            return 1.0
        time_done = (time.perf_counter() - self.t_start) / budget_s if self.main else 0.0
        return cooldown_factor(self.config.lr_cooldown, max(D.all_reduce_max(time_done), epoch_progress))

    def _roll_back(self) -> None:
        """After a non-finite loss or gradient: back to the last snapshot, at half the lr."""
        self.rollbacks_total += 1
        if self.rollbacks_total > MAX_ROLLBACKS:
            raise TrainingError(f"the loss stayed non-finite after {MAX_ROLLBACKS} roll-backs; "
                                "lower --set lr=... or set grad_clip")
        self.snapshot.restore(self.model, self.optimizer, self.ema)
        self.state.lr_scale *= 0.5
        text = (f"non-finite loss at batch {self.state.step - 1}: rolled back to batch {self.snapshot.step}, "
                f"learning rate scaled to x{self.state.lr_scale:g}")
        self.bar.write(text) if self.bar is not None else self.log(text)

    def _end_epoch(self, complete: bool, last: bool) -> None:
        """Log (if any batch ran), validate (every ``config.val_every`` epochs and at the ``last``
        one), advance the epoch if it is complete, save.

        Nothing here is committed before :meth:`_save_last`: a crash in between redoes the
        epoch's end on resume, which writes the same best checkpoint and log row again.
        """
        state = self.state
        elapsed = self.base_elapsed + time.perf_counter() - self.t_start
        if complete or state.epoch_losses:  # the same on every rank
            train_loss = D.all_reduce_mean(state.epoch_loss_sum / max(1, state.epoch_losses))
            validated = last or (state.epoch + 1) % self.config.val_every == 0
            val, predicted, improved = self._validate(complete) if validated else (math.nan, None, False)
            row = {"epoch": state.epoch + 1, "batches": state.step, "lr": f"{self._lr():.6g}",
                   "train_loss": f"{train_loss:.6f}", "val_dice": f"{val:.6f}" if validated else "",
                   "best": int(improved), "rollbacks": state.epoch_rollbacks, "elapsed_s": f"{elapsed:.1f}"}
            if self.main:
                _write_log_row(self.run_folder.log_file, row)
            self.log(f"epoch {row['epoch']}{'' if complete else ' (partial)'}: loss {row['train_loss']}"
                     + (f" val Dice {val:.4f}{' (best)' if improved else ''}" if validated else "")
                     + f"  [{elapsed / 60:.1f} min]")
            if complete and predicted is not None:
                self._watch_collapse(predicted)
        if complete:
            state.epoch += 1
            state.batch_in_epoch = state.epoch_losses = state.epoch_rollbacks = 0
            state.epoch_loss_sum = 0.0
        state.elapsed_s = elapsed
        self._save_last()

    def _validate(self, complete: bool) -> tuple[float, int, bool]:
        """(validation Dice, foreground pixels predicted, whether it is the best so far): rank 0
        validates the averaged weights (with ema) while the others wait; the best are saved."""
        state = self.state
        with self._averaged() as model:
            val, predicted = D.broadcast_object(validate(model, self.val_data, self.seed, device=self.device)
                                                if self.main else None)
            improved = val > state.best or (math.isnan(val) and complete)
            if improved:
                state.best = val if not math.isnan(val) else state.best
                if self.main:
                    model.save(self.run_folder.best, epoch=str(state.epoch + 1), val_dice=f"{val:.6f}")
        return val, predicted, improved

    def _watch_collapse(self, predicted: int) -> None:
        """A model that had learned but now predicts no foreground on any validation slice (while
        the labels have some) for :data:`COLLAPSE_EPOCHS` validations has collapsed to "background
        everywhere": it restarts from the best checkpoint with its learning rate halved."""
        state = self.state
        if predicted > 0 or not self.val_has_foreground:
            state.empty_epochs = 0
            return
        state.empty_epochs += 1
        if state.best <= 0:  # it never learned: say so once, nothing to go back to
            if state.empty_epochs == NO_START_EPOCHS:
                self.log(f"warning: no foreground predicted in {NO_START_EPOCHS} validations; "
                         "the run may not learn (check the labels, the normalisation, the learning rate)")
            return
        if state.empty_epochs < COLLAPSE_EPOCHS:
            return
        state.collapses += 1
        if state.collapses > MAX_COLLAPSES:
            raise TrainingError(f"the model collapsed to predicting no foreground {MAX_COLLAPSES + 1} times; "
                                "lower --set lr=... or change the recipe")
        weights = D.on_main(lambda: read_model_file(self.run_folder.best)[1])
        self.model.load_state_dict(weights)
        if self.ema is not None:
            self.ema.reset()
        self.optimizer.state.clear()  # Adam restarts its moments at the best weights
        state.lr_scale *= 0.5
        state.empty_epochs = 0
        self.snapshot = _Snapshot(self.model, self.optimizer, state.step, self.ema)
        self.log(f"collapse: no foreground predicted in {COLLAPSE_EPOCHS} validations while the labels "
                 f"have it; restarted from the best checkpoint (val Dice {state.best:.4f}) with the learning "
                 f"rate scaled to x{state.lr_scale:g}")

    def _save_last(self) -> None:
        """Write the training state (weights, optimiser, every rank's generator, counters) as one
        file, then the weights as ``last.safetensors``. A collective: every rank must call it."""
        states = D.all_gather_object(self.generator.get_state().cpu())
        if self.main:
            save_training_state(self.run_folder.last_state, self.model.state_dict(), self.optimizer,
                                states, dataclasses.asdict(self.state),
                                self.ema.state_dict() if self.ema is not None else None)
            with self._averaged() as model:
                model.save(self.run_folder.last, epoch=str(self.state.epoch))

    def _averaged(self) -> contextlib.AbstractContextManager[SegmentationModel]:
        """A block in which the model holds the weights to validate and save: the averaged ones
        with ``ema``, else its own."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext(self.model)

    def _interrupted(self, agreed: bool) -> None:
        self._close_bar()
        where = self.run_folder.checkpoints
        if self.world > 1 and not agreed:
            # Interrupted mid-batch on this rank only: the other ranks cannot join a save.
            self.log(f"interrupted: {where} keeps the position of the last completed epoch")
            return
        if self.batch_start_rng is not None:  # a batch was cut short: it will be redone on resume
            self.generator.set_state(self.batch_start_rng)
        self.state.elapsed_s = self.base_elapsed + time.perf_counter() - self.t_start
        self._save_last()
        self.log(f"interrupted: saved the position (epoch {self.state.epoch + 1}, batch "
                 f"{self.state.batch_in_epoch}) to {where}")

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _AgreedStop(Exception):
    """All ranks agreed to stop at this batch boundary (a SIGINT/SIGTERM arrived)."""


# -- small pieces ---------------------------------------------------------------------------------
class _Snapshot:
    """An in-memory copy of model, optimiser and weight-average state to roll back to after a
    non-finite loss."""

    def __init__(self, model: SegmentationModel, optimizer: torch.optim.Optimizer, step: int,
                 ema: WeightAverage | None = None) -> None:
        self.step = step
        self.ema = ema.state_dict() if ema is not None else None
        self.model = {k: v.clone() for k, v in model.state_dict().items()}
        opt = optimizer.state_dict()
        self.opt_state = {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
                          for i, s in opt["state"].items()}
        self.opt_groups = json.loads(json.dumps(opt["param_groups"]))

    def restore(self, model: SegmentationModel, optimizer: torch.optim.Optimizer,
                ema: WeightAverage | None = None) -> None:
        model.load_state_dict(self.model)
        if ema is not None and self.ema is not None:
            ema.load_state_dict(self.ema)
        optimizer.load_state_dict({"state": {i: {k: (v.clone() if torch.is_tensor(v) else v)
                                                 for k, v in s.items()} for i, s in self.opt_state.items()},
                                   "param_groups": json.loads(json.dumps(self.opt_groups))})


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


def _progress_bar(n_batches: int, state: RunState, config: MedNCAConfig, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=n_batches, initial=state.batch_in_epoch, leave=False, dynamic_ncols=True,
                desc=f"epoch {state.epoch + 1}/{config.epochs}", unit="batch")


def _write_log_row(path: Path, row: dict) -> None:
    """Add ``row`` to the log, replacing rows of its epoch and later ones (left by a partial epoch
    or by an epoch end that a crash interrupted), atomically."""
    rows = []
    if path.exists():
        try:
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if (r.get("epoch") or "").isdigit() and int(r["epoch"]) < row["epoch"]]
        except (OSError, ValueError, csv.Error) as exc:  # ValueError: not UTF-8
            raise DataError(f"cannot read the run's log {path} ({exc}); move it away to start a new log") from exc
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows([*rows, row])
