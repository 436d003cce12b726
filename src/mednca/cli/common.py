"""What the commands share: argument types, status lines and progress bars."""

from __future__ import annotations

import sys
from typing import Callable


def log(text: str) -> None:
    """A status line on standard output."""
    print(text, flush=True)


def case_progress(desc: str) -> Callable[[int, int, str], None]:
    """A callback ``progress(done, total, case_id)`` that drives a tqdm bar (on a terminal)."""
    state: dict = {}

    def update(done: int, total: int, case_id: str) -> None:
        if "bar" not in state:
            from tqdm import tqdm

            state["bar"] = tqdm(total=total, desc=desc, unit="case", disable=not sys.stderr.isatty(), leave=False)
        state["bar"].update(1)
        state["bar"].set_postfix_str(case_id)
        if done == total:
            state["bar"].close()

    return update
