"""Writing results: JSON that stays valid with NaN/inf, and numbers as CSV fields or table cells."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .fsutil import atomic_write_text

#: What a table cell shows for a missing or undefined number.
MISSING = "–"


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, in nested dicts/lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (non-finite floats as null), atomically."""
    atomic_write_text(path, json.dumps(json_safe(data), indent=2) + "\n")
    return Path(path)


def csv_number(value: float) -> str:
    """A CSV field: 6 significant digits, empty for NaN/inf."""
    return f"{value:.6g}" if math.isfinite(value) else ""


def cell(value: Any, fmt: str = ".4f", missing: str = MISSING) -> str:
    """A table cell: ``format(value, fmt)``; ``missing`` for None and NaN/inf; text as it is."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    if isinstance(value, str):
        return value
    return format(value, fmt)


def one_line(message: str) -> str:
    """A message on one line: its lines joined with "; " and runs of spaces folded."""
    return "; ".join(" ".join(line.split()) for line in message.splitlines() if line.strip())
