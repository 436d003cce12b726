"""Models shipped inside the package: ``mednca/models/NAME.safetensors`` with its card ``NAME.json``.

A shipped model is an ordinary mednca checkpoint; its model card (JSON) says what it is for, what
input it expects, how it was trained and tested, its review threshold and its licence, and holds
the checkpoint's sha256, which is checked every time the model is loaded (a damaged or swapped
file is refused). Files are found with :mod:`importlib.resources`, so they load the same from a
source tree and from an installed wheel, with no network.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

#: Keys every model card has (see docs/models.md).
CARD_KEYS = ("name", "task", "structure", "modality", "input", "intended_use", "file", "sha256",
             "parameters", "mednca_version", "training", "test", "review", "licence", "attribution")


def _folder() -> Path:
    return Path(str(resources.files("mednca") / "models"))


def shipped_names() -> list[str]:
    """Names of the shipped models, sorted."""
    folder = _folder()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def is_shipped(name: object) -> bool:
    """Whether ``name`` (a string such as ``"hippocampus"``) names a shipped model."""
    return isinstance(name, str) and name in shipped_names()


def model_card(name: str) -> dict[str, Any]:
    """The model card of shipped model ``name``.

    Raises:
        CheckpointError: No such model, or its card is unreadable or incomplete.
    """
    if not is_shipped(name):
        available = ", ".join(shipped_names()) or "none"
        raise CheckpointError(f"no shipped model named {name!r} (shipped: {available}; `mednca models` lists them)")
    path = _folder() / f"{name}.json"
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"the model card {path} is unreadable ({exc}); reinstall mednca") from exc
    missing = [key for key in CARD_KEYS if key not in card] if isinstance(card, dict) else list(CARD_KEYS)
    if missing:
        raise CheckpointError(f"the model card {path} lacks {', '.join(missing)}; reinstall mednca")
    return card


def shipped_checkpoint(name: str) -> Path:
    """The checkpoint file of shipped model ``name``, after checking its sha256 against the card.

    Raises:
        CheckpointError: Unknown name, missing file, or a checksum that does not match.
    """
    card = model_card(name)
    path = _folder() / card["file"]
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise CheckpointError(f"shipped model {name!r}: cannot read {path} ({exc}); reinstall mednca") from exc
    if digest != card["sha256"]:
        raise CheckpointError(f"shipped model {name!r}: {path} does not match its model card's sha256 "
                              f"(damaged or replaced); reinstall mednca")
    return path


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file (what a model card records)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
