"""What a training run starts from, decided on rank 0 before anything is trained: the config,
seed and split (given, or the run's own on resume), checks of the data, and then either a new run
folder or the saved training state to resume from."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import TrainingState, read_model_file
from ..config import MedNCAConfig, check_seed
from ..data.cases import Case, find_cases
from ..data.runfolder import RunFolder
from ..data.splits import load_split, make_split
from ..data.volumes import file_axis_codes, read_case
from ..errors import CheckpointError, DataError, OutputError, OutputExistsError
from ..version import __version__


@dataclass
class Plan:
    """What ``train`` was asked to do, before anything is read or written."""

    data_dir: Path
    run: RunFolder
    config: MedNCAConfig | None
    seed: int
    split_file: Path | None
    epochs: int | None
    resume: bool
    overwrite: bool


def prepare(plan: Plan, world: int) -> tuple[MedNCAConfig, int, dict[str, list[str]]]:
    """(config, seed, split) of the run: the saved ones on resume, else the given ones."""
    run = plan.run
    if plan.resume:
        if not run.last_state.is_file() or not run.config_file.is_file():
            raise CheckpointError(f"{run.path} has no checkpoint to resume from (expected {run.last_state})")
        saved = TrainingState(run.last_state).world_size
        if saved != world:
            how = "without --distributed" if saved == 1 else f"with --distributed in {saved} processes"
            raise CheckpointError(f"{run.path} was trained with {saved} process(es) and resumes exactly only "
                                  f"with the same number (this is {world}); resume it {how}, or start a new "
                                  "run from its checkpoint")
        seed = run.info().get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise DataError(f"{run.info_file} has no integer seed; the run folder is damaged")
        config, seed, split = run.config(), check_seed(seed), run.split()
        for part in ("train", "val", "test"):
            if part not in split:
                raise DataError(f"{run.split_file} has no {part!r} list; the run folder is damaged")
    else:
        config, seed = plan.config or MedNCAConfig.preset("hippocampus"), check_seed(plan.seed)
        if run.path.exists() and not run.path.is_dir():
            raise OutputError(f"run folder {run.path} is a file; give --out a folder")
        if run.path.exists() and any(run.path.iterdir()) and not plan.overwrite:
            raise OutputExistsError(f"run folder {run.path} already exists; pass --resume to continue it "
                                    "or --overwrite to start over")
        cases = find_cases(plan.data_dir, config.channel)
        ids = [c.case_id for c in cases]
        split = load_split(plan.split_file, ids, seed) if plan.split_file else make_split(ids, seed)
        if config.orientation is None:
            config = config.replace(orientation=common_orientation([c for c in cases if c.case_id in set(split["train"])]))
    if plan.epochs is not None:
        config = config.replace(epochs=plan.epochs)
    return config, seed, split


def common_orientation(cases: list[Case]) -> str | None:
    """The voxel axis codes most of the cases' images have (what a new run records and reorients
    every volume to), or None if none can be read."""
    codes = Counter(c for c in (file_axis_codes(case.image) for case in cases) if c is not None)
    return codes.most_common(1)[0][0] if codes else None


def split_cases(data_dir: Path, config: MedNCAConfig, ids: list[str], what: str) -> list[Case]:
    """The cases of ``data_dir`` with these ids; every one must be there."""
    wanted = set(ids)
    cases = [c for c in find_cases(data_dir, config.channel) if c.case_id in wanted]
    missing = sorted(wanted - {c.case_id for c in cases})
    if missing:
        raise DataError(f"{len(missing)} {what} case(s) of the run are not in {data_dir}, e.g. {missing[0]}; "
                        "give the task folder the run was made with")
    return cases


def check_cases(data_dir: Path, config: MedNCAConfig, ids: list[str], what: str) -> None:
    """Read every case of a split part once, so a broken case stops training now, not at evaluate."""
    for case in split_cases(data_dir, config, ids, what):
        read_case(case)


def write_or_read(plan: Plan, config: MedNCAConfig, seed: int, split: dict[str, list[str]]) -> tuple | None:
    """A new run: create the run folder. A resumed one: (weights, optimiser state, counters,
    per-rank generator states, averaged weights or None) from its training state, on the CPU."""
    run = plan.run
    if not plan.resume:
        info = {"data": str(plan.data_dir.resolve()), "seed": seed, "mednca_version": __version__,
                "split_file": str(plan.split_file) if plan.split_file else None,
                "torch_version": torch.__version__}
        run.create(config, split, info)
        return None
    if plan.epochs is not None:
        run.write_config(config)
    state = TrainingState(run.last_state)
    weights = state.model_state
    if weights is None:  # a state written before it held the weights
        weights = read_model_file(run.last)[1]
    return weights, state.optimizer_state, state.counters, state.generator_states, state.ema_state
