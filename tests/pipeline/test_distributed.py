"""mednca.pipeline.distributed and ``train(distributed=True)``: 2 CPU processes (gloo, loopback) via torchrun.

The two torchrun launches (one through the ``mednca`` command, one through a small script that
calls ``train`` several times and dumps each rank's final weights) run once per module; the tests
below check their outputs.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mednca.pipeline import distributed as D
from mednca.cli import main
from mednca.config import MedNCAConfig
from mednca.errors import CheckpointError, MedNCAError
from mednca.nn.model import MedNCA
from mednca.pipeline.train import shard_order, train


# Run by torchrun in each of the 2 processes: argv = data folder, output root.
SCRIPT = textwrap.dedent('''
    import os, signal, sys, json
    from safetensors.torch import save_file
    import mednca.pipeline.train as train_mod
    from mednca.pipeline import distributed as D
    from mednca.config import MedNCAConfig

    data, root = sys.argv[1], sys.argv[2]
    info = D.init_from_env()  # train() reuses this group and leaves it alone
    cfg = MedNCAConfig.from_json(os.path.join(root, "cfg.json"))
    kw = dict(progress=False, log=lambda s: None, distributed=True)

    def dump(result, name):
        save_file({k: v.contiguous() for k, v in result.model.state_dict().items()},
                  os.path.join(root, f"{name}.rank{info.rank}.safetensors"))

    def on_rank(rank, call, action):
        """Wrap the loss so that on ``rank`` its ``call``-th evaluation does ``action``."""
        original, n = train_mod.dice_bce_loss, [0]
        def loss(logits, target):
            n[0] += 1
            value = original(logits, target)
            return action(value) if info.rank == rank and n[0] == call else value
        train_mod.dice_bce_loss = loss
        return original

    dump(train_mod.train(data, os.path.join(root, "straight"), cfg, seed=0, **kw), "straight")

    train_mod.train(data, os.path.join(root, "resumed"), cfg, seed=0, epochs=1, **kw)
    dump(train_mod.train(data, os.path.join(root, "resumed"), None, resume=True, epochs=2, **kw), "resumed")

    # SIGTERM reaches rank 1 only, during its 2nd batch: all ranks stop after that batch.
    original = on_rank(1, 2, lambda v: (os.kill(os.getpid(), signal.SIGTERM), v)[1])
    try:
        train_mod.train(data, os.path.join(root, "stopped"), cfg, seed=0, **kw)
        raise SystemExit("not interrupted")
    except KeyboardInterrupt:
        pass
    train_mod.dice_bce_loss = original
    dump(train_mod.train(data, os.path.join(root, "stopped"), None, resume=True, **kw), "stopped")

    # A NaN loss on rank 1 only, at its 2nd batch: every rank rolls back together.
    original = on_rank(1, 2, lambda v: v * float("nan"))
    dump(train_mod.train(data, os.path.join(root, "nan"), cfg, seed=0, **kw), "nan")
    train_mod.dice_bce_loss = original

    budget = train_mod.train(data, os.path.join(root, "budget"), cfg, seed=0, max_minutes=1e-9, **kw)
    with open(os.path.join(root, f"budget.rank{info.rank}.json"), "w") as f:
        json.dump([budget.stopped_early, budget.batches_done], f)
    D.cleanup()
''')


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in D.ENV_VARS + ("LOCAL_RANK",)}
    env.setdefault("OMP_NUM_THREADS", "1")
    if sys.platform.startswith("linux") and Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    return env


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120)


def _log(run: Path) -> list[dict]:
    with (run / "log.csv").open() as f:
        return list(csv.DictReader(f))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def tiny(tiny3_config) -> MedNCAConfig:
    return tiny3_config.replace(epochs=2)


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    from mednca.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("ddp") / "data", n_cases=6, shape=(20, 20, 6))


@pytest.fixture(scope="module")
def script_runs(task, tmp_path_factory, tiny) -> Path:
    """Output root of SCRIPT run by 2 processes."""
    root = tmp_path_factory.mktemp("ddp_api")
    tiny.to_json(root / "cfg.json")
    (root / "run_ddp.py").write_text(SCRIPT)
    proc = _torchrun(str(root / "run_ddp.py"), str(task), str(root), cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


def _dumped(root: Path, name: str) -> tuple[dict, dict]:
    return tuple(load_file(str(root / f"{name}.rank{r}.safetensors")) for r in (0, 1))


def test_cli_two_processes(task, tmp_path, tiny):
    tiny.to_json(tmp_path / "cfg.json")
    proc = _torchrun("-m", "mednca", "train", "--distributed", "--data", str(task), "--out", "run",
                     "--config", "cfg.json", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("done: 2 epochs, 6 batches") == 1  # rank 0 reports, once
    run = tmp_path / "run"
    # 4 train cases x 6 slices / batch 4 = 6 batches per epoch -> 3 steps of 2 x 4 slices
    assert [(r["epoch"], r["batches"]) for r in _log(run)] == [("1", "3"), ("2", "6")]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == \
        ["best.safetensors", "last.safetensors", "last.state.safetensors"]
    assert not [p for p in run.rglob("*") if p.name.startswith(".")]  # no temp files left
    assert MedNCAConfig.from_json(run / "config.json") == tiny.replace(orientation="RAS")  # recorded from the data


def test_ranks_end_with_identical_weights(script_runs, tiny):
    rank0, rank1 = _dumped(script_runs, "straight")
    assert _same(rank0, rank1)
    assert _same(rank0, load_file(str(script_runs / "straight" / "checkpoints" / "last.safetensors")))
    fresh = MedNCA(tiny, generator=torch.Generator().manual_seed(0)).state_dict()
    assert not _same(rank0, fresh)  # it did train
    assert [r["batches"] for r in _log(script_runs / "straight")] == ["3", "6"]


def test_resume_is_exact(script_runs):
    straight = _dumped(script_runs, "straight")[0]
    assert _same(*_dumped(script_runs, "resumed"))
    assert _same(straight, _dumped(script_runs, "resumed")[0])
    assert [r["train_loss"] for r in _log(script_runs / "resumed")] == \
        [r["train_loss"] for r in _log(script_runs / "straight")]


def test_signal_on_one_rank_stops_all_and_resumes_exactly(script_runs):
    assert _same(*_dumped(script_runs, "stopped"))
    assert _same(_dumped(script_runs, "straight")[0], _dumped(script_runs, "stopped")[0])
    assert [r["epoch"] for r in _log(script_runs / "stopped")] == ["1", "2"]


def test_non_finite_loss_on_one_rank_rolls_back_all(script_runs):
    rank0, rank1 = _dumped(script_runs, "nan")
    assert _same(rank0, rank1) and all(torch.isfinite(t).all() for t in rank0.values())
    assert [r["rollbacks"] for r in _log(script_runs / "nan")] == ["1", "0"]


def test_time_budget_stops_all_ranks_together(script_runs):
    for r in (0, 1):
        assert json.loads((script_runs / f"budget.rank{r}.json").read_text()) == [True, 0]
    assert (script_runs / "budget" / "checkpoints" / "last.state.safetensors").is_file()


def test_resume_with_another_process_count_is_refused(script_runs, task, tmp_path):
    import shutil

    run = shutil.copytree(script_runs / "straight", tmp_path / "run")
    with pytest.raises(CheckpointError, match="2 process"):
        train(task, run, None, resume=True, epochs=3, progress=False, log=lambda s: None)


def test_one_process_group_equals_plain_training(task, tmp_path, monkeypatch, tiny):
    """Rank 0's randomness is the single-process one: a 1-process distributed run is identical."""
    config = tiny.replace(batches_per_epoch=2)
    plain = train(task, tmp_path / "plain", config, seed=3, epochs=1, progress=False, log=lambda s: None)
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    ddp = train(task, tmp_path / "ddp", config, seed=3, epochs=1, progress=False, log=lambda s: None,
                distributed=True)
    assert not D.is_initialized()  # train() left the group it joined
    assert _same(plain.model.state_dict(), ddp.model.state_dict())
    assert _log(tmp_path / "plain")[0]["train_loss"] == _log(tmp_path / "ddp")[0]["train_loss"]


def test_distributed_without_torchrun_is_a_clear_error(task, tmp_path, monkeypatch, capsys):
    for key in D.ENV_VARS:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(MedNCAError, match="torchrun --nproc-per-node"):
        D.init_from_env()
    rc = main(["train", "--distributed", "--data", str(task), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("mednca: error: --distributed needs") and "torchrun" in err
    assert not (tmp_path / "run").exists()


def test_single_process_helpers_are_identity():
    assert not D.is_initialized() and D.rank() == 0 and D.world_size() == 1
    assert D.all_reduce_mean(2.5) == 2.5 and D.any_true(False, True) == (False, True)
    assert D.all_true(True) and D.broadcast_object({"a": 1}) == {"a": 1} and D.all_gather_object(3) == [3]
    D.barrier()


def test_shard():
    items = list(range(7))
    shards = [D.shard(items, r, 3) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(shards, [])) == items
    assert D.shard(items, 0, 1) == items
    with pytest.raises(ValueError):
        D.shard(items, 3, 3)


def test_shard_order():
    order = torch.arange(24)  # 6 batches of 4
    parts = [shard_order(order, 4, r, 2) for r in range(2)]
    assert parts[0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19]
    assert parts[1].tolist() == [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]
    assert [len(shard_order(order, 4, r, 4)) for r in range(4)] == [4, 4, 4, 4]  # 6 // 4 steps, rest dropped
    assert [shard_order(torch.arange(4), 4, r, 3).tolist() for r in range(3)] == [[0, 1, 2, 3]] * 3
    assert torch.equal(shard_order(order, 4, 0, 1), order)
