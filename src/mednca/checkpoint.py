"""Checkpoints: safetensors weights with the config and package version in the file's header.

A model checkpoint is one ``.safetensors`` file: safe to load from an untrusted source (no pickle,
no code execution) and complete (it rebuilds its model). Training state for ``--resume``
(optimiser moments, random generator state, counters) lives in a second safetensors file beside it.
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

_KIND = "mednca-model"


class Checkpointable:
    """Persistence shared by the segmentation models (MedNCA, UNetBaseline): one safetensors
    file holding weights, config and package version; never unpickled when loaded."""

    #: ``load`` returns whatever model the checkpoint holds (True) or only this class (False).
    load_any_model: bool = False

    def num_parameters(self) -> int:
        """Trainable parameters (buffers such as batch-norm statistics are not counted)."""
        return sum(p.numel() for p in self.parameters())

    def save(self, path: str | Path, **metadata: str) -> Path:
        """Write weights + config + package version to one safetensors file (atomically)."""
        return save_model(self, path, metadata)

    @classmethod
    def load(cls, path: str | Path):
        """Load a checkpoint file, or a run folder's best (else last) checkpoint.

        Raises:
            CheckpointError: Unreadable, incompatible, or (unless ``load_any_model``) holding
                another kind of model.
        """
        model = load_model(path)
        if not cls.load_any_model and not isinstance(model, cls):
            raise CheckpointError(f"{path} holds a {model.config.model!r} model, not a {cls.__name__}; "
                                  "load it with mednca.checkpoint.load_model")
        return model


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


def save_model(model: torch.nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Atomically write ``model`` (a MedNCA or UNetBaseline) with its config and the package version."""
    from safetensors.torch import save_file

    path = Path(path)
    header = {
        "kind": _KIND,
        "format": str(CHECKPOINT_FORMAT),
        "mednca_version": __version__,
        "config": json.dumps(model.config.to_dict()),
        **{k: str(v) for k, v in (metadata or {}).items()},
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Read (header metadata, tensors) of a model checkpoint, validating its kind and format."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from safetensors import safe_open

    path = resolve_checkpoint(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable mednca checkpoint ({exc})") from exc
    if meta.get("kind") != _KIND:
        raise CheckpointError(f"{path} is a safetensors file but not a mednca model checkpoint")
    fmt = meta.get("format", "?")
    if fmt != str(CHECKPOINT_FORMAT):
        raise CheckpointError(
            f"{path} has checkpoint format {fmt} (written by mednca {meta.get('mednca_version', '?')}); "
            f"this mednca {__version__} reads format {CHECKPOINT_FORMAT}")
    return meta, tensors


def load_model(path: str | Path):
    """Rebuild the model of a checkpoint file or run folder (eval mode): a
    :class:`~mednca.model.MedNCA` or, by its config's ``model``, a
    :class:`~mednca.baselines.UNetBaseline`."""
    from .baselines import build_model

    meta, tensors = read_checkpoint(path)
    try:
        config = MedNCAConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, json.JSONDecodeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's config is invalid ({exc})") from exc
    model = build_model(config)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the config ({exc})") from exc
    return model.eval()


def save_training_state(path: str | Path, optimizer: torch.optim.Optimizer,
                        generator: torch.Generator, state: dict[str, Any]) -> None:
    """Write the optimiser moments, generator state and JSON counters for ``--resume``."""
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"generator": generator.get_state()}
    for idx, per_param in opt["state"].items():
        for key, value in per_param.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().clone().cpu()
    header = {"kind": "mednca-train-state", "param_groups": json.dumps(opt["param_groups"]),
              "state": json.dumps(state)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def load_training_state(path: str | Path, optimizer: torch.optim.Optimizer,
                        generator: torch.Generator) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote; returns the JSON counters."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read training state {path} ({exc})") from exc
    if meta.get("kind") != "mednca-train-state":
        raise CheckpointError(f"{path} is not a mednca training state")
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            per_param.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": json.loads(meta["param_groups"])})
    generator.set_state(tensors["generator"])
    return json.loads(meta["state"])
