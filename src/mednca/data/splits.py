"""Train/validation/test splits of case ids: read from JSON, or made from a seed."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

from ..errors import DataError
from ..fsutil import atomic_write_text

SPLIT_KEYS = ("train", "val", "test")


def make_split(case_ids: Sequence[str], seed: int = 0,
               fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> dict[str, list[str]]:
    """A seeded random train/val/test split (default 70/10/20), each part sorted.

    Every part gets at least one case when there are three or more cases.
    """
    ids = sorted(case_ids)
    if len(ids) < 3:
        raise DataError(f"need at least 3 cases to split into train/val/test, found {len(ids)}")
    random.Random(seed).shuffle(ids)
    n_test = max(1, round(fractions[2] * len(ids)))
    n_val = max(1, round(fractions[1] * len(ids)))
    n_test = min(n_test, len(ids) - 2)
    n_val = min(n_val, len(ids) - n_test - 1)
    test, val, train = ids[:n_test], ids[n_test:n_test + n_val], ids[n_test + n_val:]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def hold_out_val(train: Sequence[str], seed: int = 0, fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Split ``train`` into (train, val) with a seeded ``fraction`` (at least one case) held out."""
    ids = sorted(train)
    if len(ids) < 2:
        raise DataError(f"need at least 2 training cases to hold out validation, found {len(ids)}")
    random.Random(seed).shuffle(ids)
    n_val = min(max(1, round(fraction * len(ids))), len(ids) - 1)
    return sorted(ids[n_val:]), sorted(ids[:n_val])


def load_split(path: str | Path, available: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
    """Read a split JSON (``train`` and ``test`` lists, optional ``val``) and check it.

    Without ``val``, a seeded 10 % of ``train`` is held out for validation. Other keys (e.g.
    ``seed``, ``dataset``) are ignored.

    Raises:
        DataError: Unreadable file, missing lists, unknown case ids or overlapping parts.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read split file {path} ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("train", "test")):
        raise DataError(f"split file {path} needs 'train' and 'test' lists of case ids")
    for key in SPLIT_KEYS:
        if key in data and not (isinstance(data[key], list) and all(isinstance(c, str) for c in data[key])):
            raise DataError(f"split file {path}: '{key}' must be a list of case-id strings")
    split = {k: list(data.get(k, [])) for k in SPLIT_KEYS}
    if "val" in data and not split["val"]:
        raise DataError(f"split file {path}: 'val' is empty; drop it to hold out 10 % of 'train'")
    if "val" not in data:
        split["train"], split["val"] = hold_out_val(split["train"], seed)
    known = set(available)
    for key in SPLIT_KEYS:
        unknown = sorted(set(split[key]) - known)
        if unknown:
            raise DataError(f"split {path}: {len(unknown)} {key} case(s) not in the dataset, e.g. {unknown[0]}")
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        overlap = set(split[a]) & set(split[b])
        if overlap:
            raise DataError(f"split {path}: case {sorted(overlap)[0]} is in both {a} and {b}")
    if not split["train"]:
        raise DataError(f"split {path} has no training cases")
    return split


def save_split(split: dict[str, list[str]], path: str | Path) -> None:
    """Write the three lists of a split as JSON (atomically)."""
    atomic_write_text(path, json.dumps({k: split[k] for k in SPLIT_KEYS}, indent=2) + "\n")
