"""Segmentation quality without ground truth, from the spread of K stochastic passes.

An NCA fires a random half of its cells in every step, so K passes over the same image give K
different probability maps. Where the model is sure they agree; where it is lost they disagree.
M3D-NCA (Kalkhof & Mukhopadhyay, MICCAI 2023) turns this into a per-case quality score; mednca
uses the same idea with this exact definition:

    quality = sum_v std(v) / max(sum_v mean(v), 1)

over all voxels v of the volume, where ``mean`` and ``std`` are the per-voxel mean and (population)
standard deviation of the foreground probability over the K passes (what
:func:`mednca.pipeline.predict.predict_volume` returns with ``ensemble=K``). The denominator is the
expected segmentation volume in voxels (at least one voxel, so an empty prediction scores its
raw summed std). The score is dimensionless: the average spread per expected foreground voxel.
**Lower is more confident**; 0 means all K passes agreed exactly. A good score correlates
*negatively* with Dice (Spearman rho < 0).

Failure detection: a case fails when its Dice is below ``failure_dice`` (0.8); the worst-scored
``flag_fraction`` (10 %, at least one case) of the cases, by highest quality score, are flagged
for review. ``caught_share`` = failures among the flagged cases / all failures (``None`` when
there are no failures).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

DEFINITION = ("quality = sum(std) / max(sum(mean), 1) over the volume's voxels, mean/std = per-voxel "
              "mean and std of the foreground probability over K stochastic passes; lower = more "
              "confident")
FAILURE_DICE = 0.8
FLAG_FRACTION = 0.1


def quality_score(mean: np.ndarray, std: np.ndarray) -> float:
    """The per-case quality score ``sum(std) / max(sum(mean), 1)`` (see the module docstring).

    Args:
        mean: Per-voxel mean foreground probability over K passes, any shape.
        std: Per-voxel standard deviation over the same passes, same shape.
    """
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    if mean.shape != std.shape:
        raise ValueError(f"mean {mean.shape} and std {std.shape} differ in shape")
    return float(std.sum() / max(float(mean.sum()), 1.0))


def spearman(quality: Sequence[float], dice: Sequence[float]) -> float | None:
    """Spearman rank correlation of quality scores and Dice (``None`` if undefined: fewer than 3
    finite pairs, or a constant input)."""
    from scipy.stats import spearmanr

    q, d = np.asarray(quality, float), np.asarray(dice, float)
    ok = np.isfinite(q) & np.isfinite(d)
    q, d = q[ok], d[ok]
    if len(q) < 3 or np.ptp(q) == 0 or np.ptp(d) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = float(spearmanr(q, d).statistic)
    return rho if math.isfinite(rho) else None


def failure_catch(quality: Sequence[float], dice: Sequence[float], failure_dice: float = FAILURE_DICE,
                  flag_fraction: float = FLAG_FRACTION) -> dict:
    """How many failures (Dice < ``failure_dice``) flagging the worst-scored cases catches.

    The ``ceil(flag_fraction * n)`` cases (at least one) with the highest quality score are
    flagged (ties broken by case order).

    Returns:
        ``{"n_cases", "n_flagged", "n_failures", "failures_caught", "caught_share",
        "failure_dice", "flag_fraction"}``; ``caught_share`` is ``None`` without failures.
    """
    q, d = np.asarray(quality, float), np.asarray(dice, float)
    if q.shape != d.shape:
        raise ValueError(f"{len(q)} quality scores but {len(d)} Dice values")
    n = len(q)
    n_flag = min(n, max(1, math.ceil(flag_fraction * n))) if n else 0
    order = np.argsort(-np.nan_to_num(q, nan=np.inf), kind="stable")  # a nan score is flagged first
    flagged = np.zeros(n, bool)
    flagged[order[:n_flag]] = True
    failed = d < failure_dice
    n_fail = int(failed.sum())
    caught = int((failed & flagged).sum())
    return {"n_cases": n, "n_flagged": n_flag, "n_failures": n_fail, "failures_caught": caught,
            "caught_share": caught / n_fail if n_fail else None,
            "failure_dice": failure_dice, "flag_fraction": flag_fraction}


def quality_summary(quality: Sequence[float], dice: Sequence[float], ensemble: int | None = None) -> dict:
    """Spearman correlation and failure catch of per-case quality scores against Dice."""
    return {"definition": DEFINITION, "ensemble": ensemble, "spearman_dice": spearman(quality, dice),
            **failure_catch(quality, dice)}


def add_quality(results: dict, scores: dict[str, float], ensemble: int) -> dict:
    """Add per-case ``quality`` (from ``scores``, keyed by case id) to evaluation results, its
    statistics to ``results["summary"]["quality"]`` and :func:`quality_summary` as
    ``results["quality"]``. Returns ``results``."""
    from .metrics import summarize

    rows = results["cases"]
    for row in rows:
        row["quality"] = float(scores[row["case"]])
    results["summary"]["quality"] = summarize(rows, ["quality"])["quality"]
    results["quality"] = quality_summary([r["quality"] for r in rows], [r["dice"] for r in rows], ensemble)
    return results


# -- the review flag of a single result ------------------------------------------------------------
@dataclass(frozen=True)
class ReviewRule:
    """When a prediction needs a second look: its quality score above ``threshold`` (computed
    with ``ensemble`` passes), or no foreground found at all.

    A shipped model's card holds its rule, calibrated on validation cases (:func:`review_threshold`).
    """

    threshold: float
    ensemble: int

    def __post_init__(self) -> None:
        if not math.isfinite(self.threshold) or self.threshold < 0:
            raise ValueError(f"the review threshold must be a finite number >= 0, got {self.threshold!r}")
        if self.ensemble < 2:
            raise ValueError(f"a review needs at least 2 stochastic passes, got {self.ensemble}")

    def assess(self, quality: float, foreground_voxels: int) -> tuple[bool, str]:
        """(review?, the reason in words) for one prediction."""
        if foreground_voxels == 0:
            return True, "no foreground found"
        if not quality <= self.threshold:  # a nan score is reviewed too
            return True, f"quality score {quality:.4g} above the threshold {self.threshold:.4g}"
        return False, f"quality score {quality:.4g} within the threshold {self.threshold:.4g}"


def review_threshold(validation_scores: Sequence[float], flag_fraction: float = FLAG_FRACTION) -> float:
    """The quality score above which a result is flagged: the ``1 - flag_fraction`` quantile of
    the scores of validation cases (never test cases), so about ``flag_fraction`` of cases like
    them are flagged."""
    scores = np.asarray([s for s in validation_scores if math.isfinite(s)], float)
    if len(scores) == 0:
        raise ValueError("no finite validation quality scores to calibrate a review threshold on")
    return float(np.quantile(scores, 1.0 - flag_fraction))


def review_stats(flags: Sequence[bool], dice: Sequence[float], failure_dice: float = FAILURE_DICE) -> dict:
    """How a review flag did on cases with ground truth: failures (Dice < ``failure_dice``) caught
    and good cases flagged."""
    f, d = np.asarray(flags, bool), np.asarray(dice, float)
    failed = d < failure_dice
    return {"n_cases": int(len(d)), "failure_dice": failure_dice, "n_failures": int(failed.sum()),
            "failures_flagged": int((failed & f).sum()), "n_good": int((~failed).sum()),
            "good_flagged": int((~failed & f).sum())}
