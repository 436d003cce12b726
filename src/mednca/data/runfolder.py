"""The run folder: everything a training run writes, and where the later stages find it.

::

    RUN/config.json       the full config (MedNCAConfig JSON)
    RUN/split.json        train / val / test case ids
    RUN/run.json          data folder, seed, mednca and torch versions
    RUN/log.csv           one row per epoch
    RUN/checkpoints/last.safetensors        the latest weights (a model checkpoint)
    RUN/checkpoints/last.state.safetensors  what --resume needs: weights, optimiser, generators, counters
    RUN/checkpoints/best.safetensors        the best validation Dice so far
    RUN/eval_{split}.json + .csv, RUN/predictions_{split}/   from ``mednca evaluate RUN``
    RUN/robustness_{split}/                                  from ``mednca robustness RUN``
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import resolve_checkpoint
from ..config import MedNCAConfig
from ..errors import DataError
from ..fsutil import atomic_write_text
from .splits import SPLIT_KEYS, save_split


#: Where each file of a run lives, relative to the run folder (the attributes of :class:`RunFolder`).
LAYOUT = {"config_file": "config.json", "split_file": "split.json", "info_file": "run.json", "log_file": "log.csv",
          "checkpoints": "checkpoints", "last": "checkpoints/last.safetensors",
          "last_state": "checkpoints/last.state.safetensors", "best": "checkpoints/best.safetensors"}


@dataclass(frozen=True)
class RunFolder:
    """Paths and readers of one run folder (see the module docstring for the layout)."""

    path: Path
    config_file: Path
    split_file: Path
    info_file: Path
    log_file: Path
    checkpoints: Path
    last: Path  # the latest weights (a model checkpoint)
    last_state: Path  # what --resume needs, in one file
    best: Path  # the best validation Dice so far

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))
        for name, relative in LAYOUT.items():
            object.__setattr__(self, name, self.path / relative)

    @classmethod
    def open(cls, path: str | Path, *required: str) -> "RunFolder":
        """An existing run folder that has ``split.json`` and every file named in ``required``.

        Raises:
            DataError: ``path`` is not such a folder.
        """
        run = cls(path)
        for name in ("split.json", *required):
            if not (run.path / name).is_file():
                raise DataError(f"{run.path} is not a run folder (no {name})")
        return run

    def eval_file(self, split: str = "test") -> Path:
        return self.path / f"eval_{split}.json"

    def predictions(self, split: str = "test") -> Path:
        return self.path / f"predictions_{split}"

    def robustness_dir(self, split: str = "test") -> Path:
        return self.path / f"robustness_{split}"

    # -- readers -----------------------------------------------------------------------------
    def _json(self, path: Path) -> Any:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8
            raise DataError(f"cannot read {path} ({exc})") from exc
        if not isinstance(data, dict):
            raise DataError(f"{path} must hold a JSON object, got {type(data).__name__}")
        return data

    def config(self) -> MedNCAConfig:
        return MedNCAConfig.from_json(self.config_file)

    def split(self) -> dict[str, list[str]]:
        """The run's split, ``{"train": [...], "val": [...], "test": [...]}``."""
        split = self._json(self.split_file)
        for name, ids in split.items():
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise DataError(f"{self.split_file}: {name!r} must be a list of case ids")
        return split

    def split_ids(self, name: str) -> list[str]:
        """The case ids of one part of the split."""
        split = self.split()
        if name not in split:
            raise DataError(f"split {name!r} not in {self.split_file} (has {', '.join(split)})")
        return list(split[name])

    def info(self) -> dict[str, Any]:
        """``run.json``: ``data``, ``seed``, versions."""
        if not self.info_file.is_file():
            raise DataError(f"{self.path} has no run.json; pass the task folder with --data")
        return self._json(self.info_file)

    def data_dir(self, override: str | Path | None = None) -> Path:
        """The task folder: ``override`` if given, else the one the run was trained on."""
        if override:
            return Path(override)
        data = self.info().get("data")
        if not isinstance(data, str):
            raise DataError(f"{self.info_file} does not name the task folder; pass it with --data")
        return Path(data)

    def eval_results(self, split: str = "test") -> dict[str, Any]:
        """``eval_{split}.json``: ``cases``, ``summary``, ... (see :mod:`mednca.pipeline.evaluate`)."""
        return self._json(self.eval_file(split))

    def checkpoint(self) -> Path:
        """The best checkpoint, else the last one."""
        return resolve_checkpoint(self.path)

    # -- writers -----------------------------------------------------------------------------
    def create(self, config: MedNCAConfig, split: dict[str, list[str]], info: dict[str, Any]) -> None:
        """Make the folder with config, split and run info; stale files of an earlier run removed."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in (self.log_file, self.last, self.last_state, self.best):
            stale.unlink(missing_ok=True)
        self.write_config(config)
        save_split({k: split[k] for k in SPLIT_KEYS}, self.split_file)
        atomic_write_text(self.info_file, json.dumps(info, indent=2) + "\n")

    def write_config(self, config: MedNCAConfig) -> None:
        atomic_write_text(self.config_file, json.dumps(config.to_dict(), indent=2) + "\n")
