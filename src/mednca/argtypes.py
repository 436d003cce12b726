"""Command-line argument types: integers checked when parsed, so a bad value is a usage error."""

from __future__ import annotations

import argparse
from typing import Callable

from .config import MAX_ENSEMBLE, MAX_SEED


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def int_range(low: int, high: int) -> Callable[[str], int]:
    """A type accepting the integers from ``low`` to ``high``."""
    def parse(text: str) -> int:
        value = _integer(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, got {value}")
        return value

    parse.__name__ = f"integer from {low} to {high}"
    return parse


#: A random seed (what torch generators and the derived per-rank / per-epoch seeds accept).
seed = int_range(0, MAX_SEED)
#: Stochastic passes of an ensemble prediction.
ensemble = int_range(1, MAX_ENSEMBLE)
#: A TCP port.
port = int_range(1, 65535)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value
