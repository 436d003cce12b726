"""``mednca demo``: the whole pipeline on a built-in procedural dataset, in a couple of minutes."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

from ..config import MedNCAConfig


def run_demo(out: str | Path | None = None, *, seed: int = 0, epochs: int = 30, n_cases: int = 24,
             max_minutes: float | None = None, log: Callable[[str], None] = print) -> dict:
    """Make a synthetic dataset, train the ``demo`` preset, evaluate on its test split.

    Args:
        out: Folder to keep the dataset and run in (default: a temporary folder, deleted after).
        seed: Seed of the data split and the training.
        epochs: Training epochs.
        n_cases: Synthetic cases to generate.
        max_minutes: Optional training time budget (default none: all ``epochs`` run, so a slow
            machine takes longer but still ends with a trained model).
        log: Where status lines go.

    Returns:
        The test evaluation results (``summary`` holds the mean test Dice).
    """
    from ..data.synthetic import make_synthetic_dataset
    from .evaluate import evaluate_run
    from .train import train

    with tempfile.TemporaryDirectory(prefix="mednca-demo-") as tmp:
        root = Path(out) if out is not None else Path(tmp)
        t0 = time.perf_counter()
        data = make_synthetic_dataset(root / "data", n_cases=n_cases, seed=0)
        log(f"made {n_cases} synthetic MRI-like cases in {data}")
        config = MedNCAConfig.preset("demo", epochs=epochs)
        result = train(data, root / "run", config, seed=seed, max_minutes=max_minutes, overwrite=True, log=log)
        results, path = evaluate_run(result.run_dir, "test", seed=seed, overwrite=True)
        dice = results["summary"]["dice"]
        log(f"test Dice {dice['mean']:.3f} ± {dice['std']:.3f} over {dice['n']} cases "
            f"({time.perf_counter() - t0:.0f} s in all)" + (f"; results in {path}" if out else ""))
        return results
