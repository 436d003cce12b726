"""Quality estimate without ground truth: the score, its correlation with Dice, failures caught."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from mednca.pipeline.evaluate import evaluate_run
from mednca.pipeline.quality import add_quality, failure_catch, quality_score, quality_summary, spearman


def test_quality_score_formula() -> None:
    mean = np.array([[0.9, 0.8], [0.1, 0.0]])
    std = np.array([[0.1, 0.2], [0.05, 0.0]])
    assert quality_score(mean, std) == pytest.approx(0.35 / 1.8)
    # an empty prediction: the denominator is floored at one voxel
    assert quality_score(np.zeros((2, 2)), np.full((2, 2), 0.1)) == pytest.approx(0.4)
    assert quality_score(np.full((3, 3, 3), 0.7), np.zeros((3, 3, 3))) == 0.0
    with pytest.raises(ValueError):
        quality_score(np.zeros(3), np.zeros(4))


def test_spearman() -> None:
    q = [0.1, 0.2, 0.3, 0.4]
    assert spearman(q, [0.9, 0.8, 0.7, 0.1]) == pytest.approx(-1.0)
    assert spearman(q, [0.1, 0.3, 0.2, 0.9]) == pytest.approx(0.8)
    assert spearman(q, [0.5, 0.5, 0.5, 0.5]) is None  # constant Dice: undefined
    assert spearman([0.1, 0.2], [0.5, 0.6]) is None  # too few cases
    assert spearman([0.1, float("nan"), 0.3, 0.4, 0.2], [0.9, 0.1, 0.7, 0.2, 0.6]) == pytest.approx(-0.8)


def test_failure_catch() -> None:
    # 10 cases, two failures (Dice < 0.8): the worst-scored 10 % = 1 case, which is one failure
    q = [0.1, 0.9, 0.2, 0.3, 0.5, 0.2, 0.1, 0.4, 0.6, 0.2]
    d = [0.9, 0.3, 0.9, 0.85, 0.7, 0.95, 0.9, 0.9, 0.88, 0.9]
    r = failure_catch(q, d)
    assert r["n_cases"] == 10 and r["n_flagged"] == 1 and r["n_failures"] == 2
    assert r["failures_caught"] == 1 and r["caught_share"] == 0.5
    # 20 cases -> 2 flagged; both failures have the highest scores
    r = failure_catch([0.1] * 18 + [0.8, 0.9], [0.9] * 18 + [0.2, 0.75])
    assert r["n_flagged"] == 2 and r["n_failures"] == 2 and r["caught_share"] == 1.0
    # at least one case is flagged, however few there are
    assert failure_catch([0.3, 0.1], [0.5, 0.9])["n_flagged"] == 1
    # no failures -> nothing to catch: null, not 0 or 1
    r = failure_catch(q, [0.9] * 10)
    assert r["n_failures"] == 0 and r["failures_caught"] == 0 and r["caught_share"] is None
    assert json.loads(json.dumps(quality_summary(q, [0.9] * 10, 4)))["caught_share"] is None


def test_add_quality() -> None:
    results = {"cases": [{"case": "a", "dice": 0.9}, {"case": "b", "dice": 0.5}, {"case": "c", "dice": 0.7}],
               "summary": {}}
    add_quality(results, {"a": 0.1, "b": 0.5, "c": 0.2}, ensemble=3)
    assert [r["quality"] for r in results["cases"]] == [0.1, 0.5, 0.2]
    assert results["summary"]["quality"]["mean"] == pytest.approx(0.8 / 3)
    q = results["quality"]
    assert q["ensemble"] == 3 and q["spearman_dice"] == pytest.approx(-1.0)
    assert q["n_flagged"] == 1 and q["n_failures"] == 2 and q["caught_share"] == 0.5
    assert "sum(std)" in q["definition"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, train_tiny) -> Path:
    return train_tiny(tmp_path_factory.mktemp("quality"))[1]


def test_evaluate_run_adds_quality(tiny_run: Path) -> None:
    results, path = evaluate_run(tiny_run, "test", ensemble=2, overwrite=True)
    assert len(results["cases"]) == 3
    for row in results["cases"]:
        assert math.isfinite(row["quality"]) and row["quality"] >= 0
    saved = json.loads(path.read_text())
    assert set(saved["quality"]) >= {"spearman_dice", "n_failures", "failures_caught", "caught_share",
                                     "n_flagged", "definition"}
    assert saved["quality"]["ensemble"] == 2 and saved["summary"]["quality"]["n"] == 3
    rows = list(csv.reader(path.with_suffix(".csv").open()))
    assert rows[0][-1] == "quality" and len(rows) == 1 + 3 + 2
    # K = 1: no quality anywhere (and the CSV keeps its columns)
    results, path = evaluate_run(tiny_run, "test", ensemble=1, overwrite=True)
    assert "quality" not in results and "quality" not in results["cases"][0]
    assert "quality" not in next(csv.reader(path.with_suffix(".csv").open()))
