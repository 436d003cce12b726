"""RunFolder: what counts as a run folder, its split and data folder, and which checkpoint it names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mednca.config import MedNCAConfig
from mednca.data.runfolder import RunFolder
from mednca.errors import CheckpointError, DataError

SPLIT = {"train": ["a", "b"], "val": ["c"], "test": ["d", "e"]}


@pytest.fixture
def run(tmp_path: Path) -> RunFolder:
    """A run folder as ``mednca train`` starts it: config, split and run info, no checkpoints."""
    run = RunFolder(tmp_path / "run")
    run.create(MedNCAConfig(), SPLIT, {"data": str(tmp_path / "task"), "seed": 0})
    return run


def test_open_refuses_what_is_not_a_run_folder(tmp_path: Path, run: RunFolder) -> None:
    with pytest.raises(DataError, match="is not a run folder \\(no split.json\\)"):
        RunFolder.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is not a run folder \\(no split.json\\)"):
        RunFolder.open(tmp_path / "empty")
    assert RunFolder.open(run.path, "run.json", "config.json") == run
    with pytest.raises(DataError, match="is not a run folder \\(no log.csv\\)"):
        RunFolder.open(run.path, "log.csv")


def test_layout_and_readers(run: RunFolder) -> None:
    assert run.split() == SPLIT
    assert run.config() == MedNCAConfig()
    assert run.info()["seed"] == 0
    assert run.eval_file("val") == run.path / "eval_val.json"
    assert run.predictions("val") == run.path / "predictions_val"
    assert run.robustness_dir() == run.path / "robustness_test"
    run.eval_file().write_text(json.dumps({"cases": [], "summary": {}}))
    assert run.eval_results() == {"cases": [], "summary": {}}
    run.eval_file("val").write_text("{not json")
    with pytest.raises(DataError, match="cannot read .*eval_val.json"):
        run.eval_results("val")


def test_split_ids(run: RunFolder) -> None:
    assert run.split_ids("test") == ["d", "e"]
    with pytest.raises(DataError, match="split 'holdout' not in .*split.json \\(has train, val, test\\)"):
        run.split_ids("holdout")


def test_data_dir_override(run: RunFolder, tmp_path: Path) -> None:
    assert run.data_dir() == tmp_path / "task"
    assert run.data_dir(tmp_path / "other") == tmp_path / "other"
    assert run.data_dir(str(tmp_path / "other")) == tmp_path / "other"
    run.info_file.unlink()
    assert run.data_dir(tmp_path / "other") == tmp_path / "other"  # the override needs no run.json
    with pytest.raises(DataError, match="has no run.json; pass the task folder with --data"):
        run.data_dir()


def test_checkpoint_best_else_last(run: RunFolder) -> None:
    with pytest.raises(CheckpointError, match="without checkpoints/best.safetensors or last.safetensors"):
        run.checkpoint()
    run.last.write_bytes(b"")
    assert run.checkpoint() == run.last
    run.best.write_bytes(b"")
    assert run.checkpoint() == run.best


def test_create_removes_an_earlier_runs_files(run: RunFolder) -> None:
    for stale in (run.log_file, run.last, run.last_state, run.best):
        stale.write_bytes(b"old")
    run.create(MedNCAConfig(), SPLIT, {"data": "task"})
    assert not any(p.exists() for p in (run.log_file, run.last, run.last_state, run.best))
    assert run.info() == {"data": "task"}
