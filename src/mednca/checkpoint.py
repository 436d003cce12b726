"""Checkpoint files, as pure I/O: safetensors tensors plus a JSON header; never unpickled.

* A **model checkpoint** is one ``.safetensors`` file: the weights, with the config, the package
  version and the checkpoint format in its header. It is safe to load from an untrusted source
  (no pickle, no code execution) and complete: :func:`mednca.load_model` rebuilds its model.
* A **training state** (``last.state.safetensors`` of a run) is what ``--resume`` needs in one
  file: the model weights, the optimiser moments, every process's random generator state and the
  loop's counters. One file is written atomically, so a crash leaves the old state or the new
  one, never weights of one batch with counters of another.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .config import MedNCAConfig
from .errors import CheckpointError, ConfigError
from .fsutil import atomic_path
from .version import CHECKPOINT_FORMAT, __version__

MODEL_KIND = "mednca-model"
STATE_KIND = "mednca-train-state"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's ``checkpoints/best`` (else ``last``) checkpoint."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            candidate = path / "checkpoints" / name
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path} is a folder without checkpoints/best.safetensors or last.safetensors")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def _write(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> Path:
    from safetensors.torch import save

    data = save(tensors, metadata=header)  # serialised here, written by Python: OS errors stay OSErrors
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def _read(path: Path, what: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return meta, load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable {what} ({exc})") from exc


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def write_model_file(path: str | Path, config: dict[str, Any], state_dict: dict[str, torch.Tensor],
                     metadata: dict[str, str] | None = None) -> Path:
    """Atomically write a model checkpoint: ``state_dict`` with ``config`` and the package version."""
    header = {"kind": MODEL_KIND, "format": str(CHECKPOINT_FORMAT), "mednca_version": __version__,
              "config": json.dumps(config), **{k: str(v) for k, v in (metadata or {}).items()}}
    return _write(Path(path), _cpu(state_dict), header)


def read_checkpoint(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Read (header metadata, tensors) of a model checkpoint, validating its kind and format."""
    path = resolve_checkpoint(path)
    meta, tensors = _read(path, "mednca checkpoint")
    if meta.get("kind") != MODEL_KIND:
        raise CheckpointError(f"{path} is a safetensors file but not a mednca model checkpoint")
    fmt = meta.get("format", "?")
    if fmt != str(CHECKPOINT_FORMAT):
        raise CheckpointError(
            f"{path} has checkpoint format {fmt} (written by mednca {meta.get('mednca_version', '?')}); "
            f"this mednca {__version__} reads format {CHECKPOINT_FORMAT}")
    return meta, tensors


def parse_config(text: str | None, source: str | Path) -> MedNCAConfig:
    """The :class:`MedNCAConfig` stored as JSON text in a model file (checkpoint header, ONNX
    metadata), validated and size-bounded before anything is built from it."""
    try:
        if text is None:
            raise ConfigError("no config")
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ConfigError(f"expected a JSON object, got {type(data).__name__}")
        return MedNCAConfig.from_dict(data)
    except (json.JSONDecodeError, ConfigError) as exc:
        raise CheckpointError(f"{source}: the model's config is invalid ({exc})") from exc


def read_model_file(path: str | Path) -> tuple[MedNCAConfig, dict[str, torch.Tensor], Path]:
    """(config, weights, resolved file) of a checkpoint file or run folder."""
    path = resolve_checkpoint(path)
    meta, tensors = read_checkpoint(path)
    return parse_config(meta.get("config"), path), tensors, path


def save_training_state(path: str | Path, model_state: dict[str, torch.Tensor],
                        optimizer: torch.optim.Optimizer, generator_states: list[torch.Tensor],
                        counters: dict[str, Any], ema_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Atomically write everything ``--resume`` needs into one file.

    Args:
        model_state: The model's state dict (stored as ``model.<name>``).
        optimizer: Its moments are stored as ``optim.<param index>.<key>``, its param groups in
            the header.
        generator_states: One random generator state per process, rank 0 first (``generator``,
            then ``generator.rank<r>``); the header's ``world_size`` says how many.
        counters: The training loop's JSON counters (header ``state``).
        ema_state: The averaged weights of a run with ``ema`` (stored as ``ema.<name>``).
    """
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"generator": generator_states[0]}
    tensors.update({f"generator.rank{r}": s for r, s in enumerate(generator_states) if r})
    for idx, per_param in opt["state"].items():
        for key, value in per_param.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
    tensors.update({f"model.{k}": v for k, v in model_state.items()})
    tensors.update({f"ema.{k}": v for k, v in (ema_state or {}).items()})
    header = {"kind": STATE_KIND, "format": str(CHECKPOINT_FORMAT), "param_groups": json.dumps(opt["param_groups"]),
              "state": json.dumps(counters), "world_size": str(len(generator_states))}
    return _write(Path(path), _cpu(tensors), header)


class TrainingState:
    """A training state file as read back: see :func:`save_training_state`.

    Attributes:
        counters: The loop's JSON counters.
        world_size: Processes that wrote it (1 for a single-process run).
        generator_states: One generator state per process, rank 0 first.
        model_state: The model's weights, or None in a state written before weights were kept
            in it (the run's ``last.safetensors`` holds them then).
        optimizer_state: A state dict for ``torch.optim.Optimizer.load_state_dict``.
        ema_state: The averaged weights (None for a run without ``ema``).
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        meta, tensors = _read(path, "training state")
        if meta.get("kind") != STATE_KIND:
            raise CheckpointError(f"{path} is not a mednca training state")
        try:
            self.counters: dict[str, Any] = json.loads(meta["state"])
            groups = json.loads(meta["param_groups"])
            self.world_size = int(meta.get("world_size", "1"))
            self.generator_states = [tensors["generator"]] + [
                tensors[f"generator.rank{r}"] for r in range(1, self.world_size)]
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path} is a damaged training state ({type(exc).__name__}: {exc})") from exc
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        model: dict[str, torch.Tensor] = {}
        ema: dict[str, torch.Tensor] = {}
        for name, value in tensors.items():
            if name.startswith("optim."):
                _, idx, key = name.split(".", 2)
                per_param.setdefault(int(idx), {})[key] = value
            elif name.startswith("model."):
                model[name[len("model."):]] = value
            elif name.startswith("ema."):
                ema[name[len("ema."):]] = value
        self.model_state = model or None
        self.ema_state = ema or None
        self.optimizer_state = {"state": per_param, "param_groups": groups}
