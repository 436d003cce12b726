"""mednca.pipeline.train: the run folder, exact resume, interrupts, non-finite losses, lr and batch order."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

import mednca.pipeline.train as train_mod
from mednca.config import MedNCAConfig
from mednca.data.slices import SliceData
from mednca.errors import CheckpointError, DataError, OutputExistsError
from mednca.pipeline.batches import cooldown_factor
from mednca.pipeline.train import TrainingError, epoch_order, lr_at, train


def _quiet(**kwargs):
    return dict(progress=False, log=lambda s: None, **kwargs)


def _weights(run):
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _log(run):
    with (run / "log.csv").open() as f:
        return list(csv.DictReader(f))


def _fail_on_call(n, make):
    """A dice_bce_loss wrapper whose ``n``-th call returns ``make(loss)`` (or raises it)."""
    original = train_mod.dice_bce_loss
    calls = {"n": 0}

    def wrapper(logits, target):
        calls["n"] += 1
        loss = original(logits, target)
        if calls["n"] == n:
            result = make(loss)
            if isinstance(result, BaseException):
                raise result
            return result
        return loss

    return wrapper


def test_run_folder(tmp_path, synthetic_task, tiny_config):
    out = tmp_path / "run"
    result = train(synthetic_task, out, tiny_config, seed=0, **_quiet())
    assert (result.epochs_done, result.batches_done, result.stopped_early) == (2, 12, False)
    assert MedNCAConfig.from_json(out / "config.json") == tiny_config.replace(orientation="RAS")  # recorded from the data
    split = json.loads((out / "split.json").read_text())
    parts = [set(split[k]) for k in ("train", "val", "test")]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == {f"synth_{i:03d}" for i in range(6)}
    info = json.loads((out / "run.json").read_text())
    assert info["seed"] == 0 and info["data"] == str(synthetic_task.resolve())
    rows = _log(out)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert [r["batches"] for r in rows] == ["6", "12"]  # 4 train cases x 6 slices / batch 4
    assert rows[0]["best"] == "1"
    for name in ("last.safetensors", "last.state.safetensors", "best.safetensors"):
        assert (out / "checkpoints" / name).is_file()
    assert all(torch.isfinite(t).all() for t in _weights(out).values())
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp files left


def test_existing_run_folder_needs_overwrite(tmp_path, synthetic_task, tiny_config):
    out = tmp_path / "run"
    train(synthetic_task, out, tiny_config, epochs=1, **_quiet())
    with pytest.raises(OutputExistsError):
        train(synthetic_task, out, tiny_config, epochs=1, **_quiet())
    result = train(synthetic_task, out, tiny_config, epochs=1, overwrite=True, **_quiet())
    assert result.epochs_done == 1 and len(_log(out)) == 1


def test_resume_without_checkpoint_raises(tmp_path, synthetic_task):
    with pytest.raises(CheckpointError):
        train(synthetic_task, tmp_path / "empty", resume=True, **_quiet())


def test_resume_is_exact(tmp_path, synthetic_task, tiny_config):
    train(synthetic_task, tmp_path / "straight", tiny_config, seed=0, epochs=2, **_quiet())
    train(synthetic_task, tmp_path / "resumed", tiny_config, seed=0, epochs=1, **_quiet())
    assert len(_log(tmp_path / "resumed")) == 1
    result = train(synthetic_task, tmp_path / "resumed", None, resume=True, epochs=2, **_quiet())
    assert (result.epochs_done, result.batches_done) == (2, 12)
    assert _same(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"))
    straight, resumed = _log(tmp_path / "straight"), _log(tmp_path / "resumed")
    assert [r["train_loss"] for r in straight] == [r["train_loss"] for r in resumed]


def test_resume_takes_the_weights_from_the_state_file(tmp_path, synthetic_task, tiny_config, monkeypatch):
    """A crash after the training state was written but before last.safetensors was: resume
    continues from the state's own weights, not from the older last.safetensors."""
    from mednca.nn.base import SegmentationModel

    train(synthetic_task, tmp_path / "straight", tiny_config, seed=0, epochs=3, **_quiet())
    run = tmp_path / "run"
    train(synthetic_task, run, tiny_config, seed=0, epochs=1, **_quiet())
    stale = _weights(run)
    real_save = SegmentationModel.save

    def save(self, path, **metadata):
        if path.name == "last.safetensors":
            raise KeyboardInterrupt  # killed between the two writes
        return real_save(self, path, **metadata)

    monkeypatch.setattr(SegmentationModel, "save", save)
    with pytest.raises(KeyboardInterrupt):
        train(synthetic_task, run, None, resume=True, epochs=2, **_quiet())
    monkeypatch.undo()
    assert _same(_weights(run), stale)  # last.safetensors is the epoch-1 one ...
    result = train(synthetic_task, run, None, resume=True, epochs=3, **_quiet())
    assert (result.epochs_done, result.batches_done) == (3, 18)  # ... the state says epoch 2
    assert _same(_weights(tmp_path / "straight"), _weights(run))


def test_resume_of_a_state_written_without_weights(tmp_path, synthetic_task, tiny_config):
    """Runs from before the weights were kept in the training state resume from last.safetensors."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    train(synthetic_task, tmp_path / "straight", tiny_config, seed=0, epochs=2, **_quiet())
    run = tmp_path / "run"
    train(synthetic_task, run, tiny_config, seed=0, epochs=1, **_quiet())
    state = run / "checkpoints" / "last.state.safetensors"
    with safe_open(str(state), framework="pt") as f:
        meta = f.metadata()
        old = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("model.")}
    assert len(old) < len(load_file(str(state)))
    save_file(old, str(state), metadata=meta)
    train(synthetic_task, run, None, resume=True, epochs=2, **_quiet())
    assert _same(_weights(tmp_path / "straight"), _weights(run))


def test_interrupt_leaves_resumable_checkpoint(tmp_path, synthetic_task, tiny_config, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(train_mod, "dice_bce_loss", _fail_on_call(4, lambda loss: KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        train(synthetic_task, out, tiny_config, seed=0, **_quiet())
    assert (out / "checkpoints" / "last.safetensors").is_file()
    assert (out / "checkpoints" / "last.state.safetensors").is_file()
    assert not (out / "log.csv").exists()  # no epoch finished
    monkeypatch.undo()
    result = train(synthetic_task, out, None, resume=True, **_quiet())
    assert (result.epochs_done, result.batches_done) == (2, 12)
    assert [r["epoch"] for r in _log(out)] == ["1", "2"]


def test_resume_after_interrupt_is_exact(tmp_path, synthetic_task, tiny_config, monkeypatch):
    train(synthetic_task, tmp_path / "straight", tiny_config, seed=0, **_quiet())
    monkeypatch.setattr(train_mod, "dice_bce_loss", _fail_on_call(4, lambda loss: KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        train(synthetic_task, tmp_path / "resumed", tiny_config, seed=0, **_quiet())
    monkeypatch.undo()
    train(synthetic_task, tmp_path / "resumed", None, resume=True, **_quiet())
    assert _same(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"))


def test_same_seed_gives_same_run(tmp_path, synthetic_task, tiny_config):
    torch.manual_seed(1)
    train(synthetic_task, tmp_path / "a", tiny_config, seed=0, epochs=1, **_quiet())
    torch.manual_seed(2)
    train(synthetic_task, tmp_path / "b", tiny_config, seed=0, epochs=1, **_quiet())
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))


def test_non_finite_loss_rolls_back(tmp_path, synthetic_task, tiny_config, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(train_mod, "dice_bce_loss", _fail_on_call(3, lambda loss: loss * float("nan")))
    messages = []
    result = train(synthetic_task, out, tiny_config, seed=0, progress=False, log=messages.append)
    assert result.epochs_done == 2
    assert [r["rollbacks"] for r in _log(out)] == ["1", "0"]
    assert any("non-finite loss" in m for m in messages)
    for name in ("last.safetensors", "best.safetensors"):
        tensors = load_file(str(out / "checkpoints" / name))
        assert all(torch.isfinite(t).all() for t in tensors.values())
    # the learning rate was halved after the rollback
    assert float(_log(out)[1]["lr"]) == pytest.approx(lr_at(tiny_config, 12) * 0.5, rel=1e-4)


def test_persistently_non_finite_loss_stops(tmp_path, synthetic_task, tiny_config, monkeypatch):
    monkeypatch.setattr(train_mod, "dice_bce_loss", lambda logits, target: logits.sum() * float("nan"))
    with pytest.raises(TrainingError, match="non-finite"):
        train(synthetic_task, tmp_path / "run", tiny_config, epochs=4, **_quiet())


def test_split_with_unknown_case_raises(tmp_path, synthetic_task, tiny_config):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["synth_000", "nope_999"], "val": ["synth_001"],
                                 "test": ["synth_002"]}))
    with pytest.raises(DataError, match="nope_999"):
        train(synthetic_task, tmp_path / "run", tiny_config, split_file=split, **_quiet())


def test_split_file_is_used(tmp_path, synthetic_task, tiny_config):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["synth_000", "synth_001"], "val": ["synth_002"],
                                 "test": ["synth_003"]}))
    result = train(synthetic_task, tmp_path / "run", tiny_config, split_file=split, epochs=1, **_quiet())
    saved = json.loads((tmp_path / "run" / "split.json").read_text())
    assert saved == {"train": ["synth_000", "synth_001"], "val": ["synth_002"], "test": ["synth_003"]}
    assert result.batches_done == 3  # 2 cases x 6 slices / batch 4


def test_labels_without_foreground_raise(tmp_path, synthetic_task, tiny_config):
    import nibabel as nib
    import numpy as np

    for path in (synthetic_task / "labelsTr").glob("*.nii.gz"):
        img = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), str(path))
    with pytest.raises(DataError, match="no foreground"):
        train(synthetic_task, tmp_path / "run", tiny_config, **_quiet())


def test_time_budget_stops_early(tmp_path, synthetic_task, tiny_config):
    out = tmp_path / "run"
    result = train(synthetic_task, out, tiny_config, max_minutes=1e-9, **_quiet())
    assert result.stopped_early and result.epochs_done == 0 and result.batches_done == 0
    assert (out / "checkpoints" / "last.state.safetensors").is_file()


def test_lr_at():
    cfg = MedNCAConfig(lr=1e-3, lr_gamma=0.9, warmup_batches=4, name="custom")
    assert lr_at(cfg, 0) == pytest.approx(1e-3 * 0.25)
    assert lr_at(cfg, 1) == pytest.approx(1e-3 * 0.5 * 0.9)
    assert lr_at(cfg, 3) == pytest.approx(1e-3 * 0.9 ** 3)
    assert lr_at(cfg, 10) == pytest.approx(1e-3 * 0.9 ** 10)
    no_warmup = cfg.replace(warmup_batches=0)
    assert lr_at(no_warmup, 0) == pytest.approx(1e-3)
    assert lr_at(no_warmup, 5) == pytest.approx(1e-3 * 0.9 ** 5)


def test_cooldown_factor():
    assert cooldown_factor(0.0, 0.99) == 1.0
    assert cooldown_factor(0.25, 0.5) == 1.0
    assert cooldown_factor(0.25, 0.75) == pytest.approx(1.0)
    assert cooldown_factor(0.25, 0.875) == pytest.approx(0.5)
    assert cooldown_factor(0.25, 1.0) == 0.0
    assert cooldown_factor(0.25, 1.5) == 0.0
    assert cooldown_factor(1.0, 0.0) == 1.0 and cooldown_factor(1.0, 0.5) == pytest.approx(0.5)


def test_lr_cooldown_lowers_the_last_epochs_learning_rate(tmp_path, synthetic_task, tiny_config):
    cfg = tiny_config.replace(epochs=4, lr_gamma=1.0, lr_cooldown=0.5)
    lrs = [float(row["lr"]) for row in _log(train(synthetic_task, tmp_path / "cool", cfg, **_quiet()).run_dir)]
    plain = [float(row["lr"]) for row in _log(train(synthetic_task, tmp_path / "plain",
                                                    cfg.replace(lr_cooldown=0.0), **_quiet()).run_dir)]
    assert plain == [cfg.lr] * 4
    # The log shows the last batch's rate: epochs 1-2 are before the cooldown, 3-4 inside it.
    assert lrs[:2] == [cfg.lr] * 2 and cfg.lr > lrs[2] > lrs[3] > 0 and lrs[3] < 0.25 * cfg.lr


def _slices(n: int = 10, n_fg: int = 4) -> SliceData:
    labels = torch.zeros(n, 1, 4, 4)
    labels[:n_fg, 0, 1, 1] = 1
    return SliceData(torch.rand(n, 1, 4, 4), labels, torch.zeros(n, dtype=torch.long), ["a"])


def test_epoch_order_is_deterministic_per_seed_and_epoch():
    data, cfg = _slices(), MedNCAConfig(batch_size=3, name="custom")
    a = epoch_order(data, cfg, seed=0, epoch=0)
    assert torch.equal(a, epoch_order(data, cfg, seed=0, epoch=0))
    assert len(a) == 9 and len(set(a.tolist())) == 9  # 3 whole batches, no repeats
    assert not torch.equal(a, epoch_order(data, cfg, seed=0, epoch=1))
    assert not torch.equal(a, epoch_order(data, cfg, seed=1, epoch=0))


def test_epoch_order_sampling_options():
    data = _slices()
    only_fg = epoch_order(data, MedNCAConfig(batch_size=2, empty_slice_prob=0.0, name="custom"), 0, 0)
    assert len(only_fg) == 4 and set(only_fg.tolist()) == {0, 1, 2, 3}
    fixed = epoch_order(data, MedNCAConfig(batch_size=4, batches_per_epoch=5, name="custom"), 0, 0)
    assert len(fixed) == 20 and set(fixed.tolist()) == set(range(10))


# -- crashes between writes ------------------------------------------------------------------------
class Killed(BaseException):
    """A hard kill: not an Exception, not a KeyboardInterrupt, so no handler of mednca runs."""


def _commits(monkeypatch, kill_at: int | None = None) -> list[int]:
    """Count the atomic file commits (os.replace) of mednca; the ``kill_at``-th one is killed
    just before it happens. Returns the live counter."""
    import mednca.fsutil

    real, calls = mednca.fsutil.os.replace, [0]

    def replace(src, dst):
        calls[0] += 1
        if calls[0] == kill_at:
            raise Killed
        return real(src, dst)

    monkeypatch.setattr(mednca.fsutil.os, "replace", replace)
    return calls


def _rows(run):
    return [{k: r[k] for k in ("epoch", "batches", "lr", "train_loss", "val_dice", "best", "rollbacks")}
            for r in _log(run)]


def test_a_kill_between_any_two_writes_resumes_to_the_uninterrupted_result(tmp_path, synthetic_task,
                                                                            tiny_config, monkeypatch):
    config = tiny_config.replace(batches_per_epoch=2, epochs=3)
    straight = tmp_path / "straight"
    calls = _commits(monkeypatch)
    train(synthetic_task, straight, config, seed=0, **_quiet())
    n_commits = calls[0]
    monkeypatch.undo()
    assert n_commits >= 12  # config, split, run info, then per epoch: best?, log, state, last
    resumed_from_a_state = 0
    for kill_at in range(1, n_commits + 1):
        run = tmp_path / f"killed{kill_at}"
        _commits(monkeypatch, kill_at)
        with pytest.raises(Killed):
            train(synthetic_task, run, config, seed=0, **_quiet())
        monkeypatch.undo()
        if (run / "checkpoints" / "last.state.safetensors").exists():
            train(synthetic_task, run, None, resume=True, **_quiet())
            resumed_from_a_state += 1
        else:  # killed before the first state: nothing to resume, a clear error, then a new run
            with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
                train(synthetic_task, run, None, resume=True, **_quiet())
            train(synthetic_task, run, config, seed=0, overwrite=True, **_quiet())
        assert _same(_weights(run), _weights(straight)), f"killed at commit {kill_at}"
        assert _rows(run) == _rows(straight), f"killed at commit {kill_at}"
    assert resumed_from_a_state >= n_commits - 6


def test_an_interrupt_mid_epoch_logs_the_same_row_as_a_straight_run(tmp_path, synthetic_task, tiny_config,
                                                                     monkeypatch):
    train(synthetic_task, tmp_path / "straight", tiny_config, seed=0, **_quiet())
    out = tmp_path / "run"
    monkeypatch.setattr(train_mod, "dice_bce_loss", _fail_on_call(9, lambda loss: KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        train(synthetic_task, out, tiny_config, seed=0, **_quiet())
    monkeypatch.undo()
    train(synthetic_task, out, None, resume=True, **_quiet())
    assert _rows(out) == _rows(tmp_path / "straight")  # the epoch's loss covers the batches before the stop too


def test_a_full_disk_is_one_line_and_the_run_resumes_exactly(tmp_path, synthetic_task, tiny_config):
    """The audit's reproduction: ``(ulimit -f N; mednca train --resume ...)`` on a small run."""
    import resource
    import subprocess
    import sys

    config = tiny_config.replace(batches_per_epoch=2, epochs=2)
    train(synthetic_task, tmp_path / "straight", config, seed=0, **_quiet())
    run = tmp_path / "run"
    train(synthetic_task, run, config.replace(epochs=1), seed=0, **_quiet())
    state = run / "checkpoints" / "last.state.safetensors"
    limit = state.stat().st_size // 2  # the small files fit, the training state does not

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, "-m", "mednca", "train", "--data", str(synthetic_task), "--out", str(run),
           "--resume", "--epochs", "2", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=small_files)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("mednca: error: cannot write ") and "File too large" in err and "\n" not in err
    train(synthetic_task, run, None, resume=True, epochs=2, **_quiet())
    assert _same(_weights(run), _weights(tmp_path / "straight"))
    assert _rows(run) == _rows(tmp_path / "straight")


def test_a_failed_model_build_leaves_no_run_folder(tmp_path, synthetic_task, tiny_config, monkeypatch):
    from mednca.errors import ConfigError

    def broken(config, generator=None):
        raise ConfigError("cannot build this model")

    monkeypatch.setattr(train_mod, "build_model", broken)
    with pytest.raises(ConfigError, match="cannot build"):
        train(synthetic_task, tmp_path / "run", tiny_config, **_quiet())
    assert not (tmp_path / "run").exists()


def test_a_broken_test_case_stops_training_before_it_starts(tmp_path, synthetic_task, tiny_config):
    """A test case whose label does not match its image used to pass training and fail at evaluate."""
    import nibabel as nib
    import numpy as np

    split = tmp_path / "split.json"
    ids = [f"synth_{i:03d}" for i in range(6)]
    split.write_text(json.dumps({"train": ids[:3], "val": ids[3:4], "test": ids[4:]}))
    label = synthetic_task / "labelsTr" / "synth_005.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 5), np.uint8), np.eye(4)), str(label))
    with pytest.raises(DataError, match="synth_005"):
        train(synthetic_task, tmp_path / "run", tiny_config, split_file=split, **_quiet())
    assert not (tmp_path / "run").exists()


def _scripted_validation(monkeypatch, script):
    """Replace validation by ``script``: one (Dice, predicted foreground pixels) per epoch."""
    results = iter(script)
    monkeypatch.setattr(train_mod, "validate", lambda *args, **kwargs: next(results))


def test_a_collapse_to_background_restarts_from_the_best_checkpoint(tmp_path, synthetic_task, tiny_config,
                                                                    monkeypatch):
    from mednca.checkpoint import TrainingState

    said: list[str] = []
    _scripted_validation(monkeypatch, [(0.5, 90), (0.6, 80), (0.0, 0), (0.0, 0), (0.0, 0)])
    run = tmp_path / "run"
    train(synthetic_task, run, tiny_config.replace(epochs=5, batches_per_epoch=1), progress=False, log=said.append)
    collapse = [s for s in said if s.startswith("collapse:")]
    assert len(collapse) == 1 and "val Dice 0.6000" in collapse[0] and "x0.5" in collapse[0]
    best = load_file(str(run / "checkpoints" / "best.safetensors"))
    assert _same(_weights(run), best)  # the last state is the best one again ...
    counters = TrainingState(run / "checkpoints" / "last.state.safetensors").counters
    assert (counters["lr_scale"], counters["collapses"], counters["empty_epochs"]) == (0.5, 1, 0)  # ... at half the lr


def test_a_model_that_never_learns_is_warned_about_and_repeated_collapses_stop(tmp_path, synthetic_task,
                                                                               tiny_config, monkeypatch):
    said: list[str] = []
    _scripted_validation(monkeypatch, [(0.0, 0)] * 10)
    train(synthetic_task, tmp_path / "never", tiny_config.replace(epochs=10, batches_per_epoch=1),
          progress=False, log=said.append)
    assert sum("no foreground predicted in 10 validations" in s for s in said) == 1
    assert not [s for s in said if s.startswith("collapse:")]  # nothing learned: nothing to go back to
    _scripted_validation(monkeypatch, [(0.5, 9)] + [(0.0, 0)] * 12)
    with pytest.raises(TrainingError, match="collapsed to predicting no foreground 4 times"):
        train(synthetic_task, tmp_path / "again", tiny_config.replace(epochs=13, batches_per_epoch=1), **_quiet())


def test_val_every_validates_every_nth_epoch_and_the_last(tmp_path, synthetic_task, tiny_config, monkeypatch):
    calls = []
    original = train_mod.validate
    monkeypatch.setattr(train_mod, "validate", lambda *a, **k: calls.append(1) or original(*a, **k))
    run = tmp_path / "run"
    train(synthetic_task, run, tiny_config.replace(epochs=7, batches_per_epoch=1, val_every=3), **_quiet())
    rows = _log(run)
    assert [r["epoch"] for r in rows] == [str(e) for e in range(1, 8)]
    assert [e + 1 for e, r in enumerate(rows) if r["val_dice"]] == [3, 6, 7] and len(calls) == 3
    assert all(r["best"] == "0" for r in rows if not r["val_dice"])


@pytest.mark.parametrize("budget_s, last_epoch, partial", [(4.0, 2, False), (4.5, 3, True)])
def test_the_epoch_a_time_budget_ends_is_validated(tmp_path, synthetic_task, tiny_config, monkeypatch,
                                                   budget_s, last_epoch, partial):
    """A clock that moves 1 s per batch: a budget of 4 s ends with epoch 2 (2 batches each), one
    of 4.5 s within epoch 3 (a partial epoch); either way that epoch is validated though
    ``val_every`` would skip it."""
    clock = {"now": 0.0}
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: clock["now"])
    original = train_mod.Trainer._train_batch

    def one_second(self, idx):
        original(self, idx)
        clock["now"] += 1.0

    monkeypatch.setattr(train_mod.Trainer, "_train_batch", one_second)
    run = tmp_path / "run"
    result = train(synthetic_task, run, tiny_config.replace(epochs=10, batches_per_epoch=2, val_every=5),
                   max_minutes=budget_s / 60, **_quiet())
    rows = _log(run)
    assert result.stopped_early and [r["epoch"] for r in rows] == [str(e) for e in range(1, last_epoch + 1)]
    assert [r["val_dice"] != "" for r in rows] == [False] * (last_epoch - 1) + [True]
    assert rows[-1]["batches"] == str(2 * last_epoch - partial) and result.best_val_dice >= 0
