"""Package a trained run as a model shipped in mednca: its weights, and a model card with the test
results measured here and a review threshold calibrated on the run's validation cases.

Used by ``tools/ship_model.py``; the card's words (task, input, licence, ...) come from a JSON
file written by a person, its numbers only from measurements made by :func:`ship_model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..checkpoint import read_checkpoint, read_model_file
from ..data.runfolder import RunFolder
from ..formats import write_json
from ..nn.build import build_model
from ..nn.shipped import CARD_KEYS, sha256_of
from ..pipeline.evaluate import evaluate_cases
from ..pipeline.quality import FLAG_FRACTION, ReviewRule, review_stats, review_threshold
from ..pipeline.setup import common_orientation, split_cases
from ..version import __version__

#: Card keys :func:`ship_model` measures or derives (the rest come from the ``about`` file).
MEASURED = ("name", "file", "sha256", "parameters", "mednca_version", "test", "review")


def ship_model(run_dir: str | Path, name: str, about: dict[str, Any], out_dir: str | Path, *,
               ensemble: int = 8, seed: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write ``out_dir/NAME.safetensors`` (the run's best checkpoint, with the orientation of its
    training volumes recorded) and its card ``out_dir/NAME.json``.

    Args:
        run_dir: A finished run folder (its best checkpoint is shipped).
        name: The model's name (``mednca predict --model NAME``).
        about: The card's descriptive keys (all of :data:`~mednca.nn.shipped.CARD_KEYS` but
            :data:`MEASURED`); its ``training`` dict is completed with the run's facts.
        ensemble: Stochastic passes of the review (and of the card's test results).
        seed: Seed of those passes.
    """
    missing = sorted(set(CARD_KEYS) - set(MEASURED) - set(about))
    if missing:
        raise ValueError(f"the card's description lacks {', '.join(missing)}")
    run = RunFolder.open(run_dir, "run.json")
    config, tensors, checkpoint = read_model_file(run.path)
    data_dir = run.data_dir()
    cases = {part: split_cases(data_dir, config, run.split_ids(part), part) for part in ("train", "val", "test")}
    if config.orientation is None:
        config = config.replace(orientation=common_orientation(cases["train"]))
    model = build_model(config).restore(tensors, checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = model.save(out_dir / f"{name}.safetensors", shipped_as=name)
    scratch = run.path / f"shipped-{name}"
    log(f"{name}: evaluating {len(cases['val'])} validation and {len(cases['test'])} test cases, {ensemble} passes")
    val = evaluate_cases(model, cases["val"], scratch / "val", ensemble, seed)
    test = evaluate_cases(model, cases["test"], scratch / "test", ensemble, seed)
    rule = ReviewRule(review_threshold([r["quality"] for r in val["cases"]]), ensemble)
    card = {**about, "name": name, "file": weights.name, "sha256": sha256_of(weights),
            "parameters": model.num_parameters(), "mednca_version": __version__,
            "training": {**about["training"], "train_cases": len(cases["train"]), "val_cases": len(cases["val"]),
                         "seed": run.info().get("seed"), "checkpoint_epoch": _epoch(checkpoint),
                         "orientation": config.orientation},
            "test": {"cases": len(cases["test"]), "ensemble": ensemble, "seed": seed,
                     "dice_mean": test["summary"]["dice"]["mean"], "dice_std": test["summary"]["dice"]["std"],
                     "hd95_mm_mean": test["summary"]["hd95_mm"]["mean"],
                     "quality_spearman_dice": test["quality"]["spearman_dice"]},
            "review": {"threshold": rule.threshold, "ensemble": ensemble,
                       "rule": "review when the quality score (mednca.pipeline.quality) is above the threshold "
                               "or no foreground is found",
                       "calibration": f"the {1 - FLAG_FRACTION:.0%} quantile of the quality scores of the "
                                      f"{len(cases['val'])} validation cases (never test cases)",
                       "validation": review_stats(_flags(val, rule), [r["dice"] for r in val["cases"]]),
                       "test": review_stats(_flags(test, rule), [r["dice"] for r in test["cases"]])}}
    write_json(out_dir / f"{name}.json", card)
    return card


def _flags(results: dict, rule: ReviewRule) -> list[bool]:
    return [rule.assess(r["quality"], 1 if r["volume_pred_ml"] > 0 else 0)[0] for r in results["cases"]]


def _epoch(checkpoint: Path) -> int | None:
    epoch = read_checkpoint(checkpoint)[0].get("epoch")
    return int(epoch) if epoch and epoch.isdigit() else None
