"""``mednca demo`` end to end, shrunk: synthetic data -> train -> evaluate on the test split."""

from __future__ import annotations

import json

from mednca.pipeline.demo import run_demo


def test_demo_runs_and_reports_test_dice(tmp_path):
    lines: list[str] = []
    results = run_demo(tmp_path, epochs=1, n_cases=6, log=lines.append)
    dice = results["summary"]["dice"]
    assert dice["n"] == 1 and 0.0 <= dice["mean"] <= 1.0
    assert any(line.startswith("test Dice") for line in lines)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert [r["case"] for r in results["cases"]] == split["test"]
    assert (tmp_path / "data" / "dataset.json").is_file()
