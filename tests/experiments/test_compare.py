"""mednca.experiments.compare and ``mednca compare``: Med-NCA against a UNet baseline, run folder to table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mednca.cli import main
from mednca.experiments.compare import compare_runs, markdown_table, measure_run_isolated, write_comparison
from mednca.config import MedNCAConfig
from mednca.data.synthetic import make_synthetic_dataset
from mednca.errors import DataError, MedNCAError, OutputExistsError
from mednca.nn.model import MedNCA

FIELDS = ("run", "name", "model", "parameters", "checkpoint", "checkpoint_bytes", "dice_mean", "dice_std",
          "hd95_mean_mm", "test_cases", "eval_ensemble", "image_size", "ms_per_slice", "ms_per_volume",
          "volume_shape", "volume_source", "rss_peak_mb", "rss_increase_mb", "rss_baseline_mb", "threads",
          "repeats", "note")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """(tiny Med-NCA run without eval_test.json, tiny unet-small run with it)."""
    from mednca.pipeline.evaluate import evaluate_run
    from mednca.pipeline.train import train

    root = tmp_path_factory.mktemp("compare")
    data = make_synthetic_dataset(root / "data", n_cases=6, shape=(20, 20, 6))
    quiet = dict(seed=0, progress=False, log=lambda s: None)
    common = dict(image_size=16, patch_size=8, batch_size=4, epochs=1, interpolation="linear")
    train(data, root / "nca", MedNCAConfig(channels=8, hidden=16, steps=3, **common), **quiet)
    train(data, root / "unet", MedNCAConfig(model="unet-small", **common), **quiet)
    evaluate_run(root / "unet")
    return root / "nca", root / "unet"


def test_compare_rows(runs) -> None:
    nca, unet = runs
    rows = compare_runs([nca, unet], repeats=1, isolate=False)
    assert [r["model"] for r in rows] == ["mednca", "unet-small"]
    for row in rows:
        assert tuple(row) == FIELDS
        assert row["checkpoint_bytes"] == (Path(row["run"]) / "checkpoints" / "best.safetensors").stat().st_size
        assert row["ms_per_slice"] > 0 and row["ms_per_volume"] > 0 and row["image_size"] == 16
        assert row["volume_source"].startswith("test case ") and len(row["volume_shape"]) == 3
        assert row["rss_peak_mb"] is None  # in-process: no memory figures
    a, b = rows
    assert a["parameters"] == MedNCA(MedNCAConfig(channels=8, hidden=16)).num_parameters()
    assert b["parameters"] == 31_481
    assert a["dice_mean"] is None and "mednca evaluate" in a["note"]
    assert 0.0 <= b["dice_mean"] <= 1.0 and b["test_cases"] >= 1 and b["note"] is None
    table = markdown_table(rows)
    assert sum(line.startswith("| ") for line in table.splitlines()) == 3  # header + 2 rows
    assert "| nca | mednca |" in table and "| unet | unet-small | 31,481 |" in table
    assert "n/a¹" in table and f"`mednca evaluate {nca}`" in table


def test_compare_isolated_memory(runs) -> None:
    _, unet = runs
    row = measure_run_isolated(unet, repeats=1, threads=1)
    assert row["model"] == "unet-small" and row["threads"] == 1
    assert row["rss_peak_mb"] >= row["rss_baseline_mb"] > 50  # torch alone is more than that
    assert row["rss_increase_mb"] == pytest.approx(row["rss_peak_mb"] - row["rss_baseline_mb"])


def test_compare_isolated_failure(tmp_path: Path) -> None:
    """The measuring process's error line becomes the message."""
    with pytest.raises(MedNCAError, match="measuring .*nope failed: mednca: error: .*does not exist"):
        measure_run_isolated(tmp_path / "nope", repeats=1)


def test_compare_evaluate_and_write(runs, tmp_path: Path) -> None:
    _, unet = runs
    nca = shutil.copytree(runs[0], tmp_path / "nca")  # evaluated here; the fixture's stays unevaluated
    rows = compare_runs([unet, nca], repeats=1, isolate=False, evaluate=True)
    assert (nca / "eval_test.json").is_file() and rows[1]["dice_mean"] is not None
    md, js = write_comparison(rows, tmp_path / "table.md")
    assert md.read_text() == markdown_table(rows) and "n/a" not in md.read_text()
    assert [r["name"] for r in json.loads(js.read_text())["rows"]] == ["unet", "nca"]
    with pytest.raises(OutputExistsError):
        write_comparison(rows, tmp_path / "table.md")
    with pytest.raises(DataError, match="not a run folder"):
        compare_runs([tmp_path / "nope"])
    for broken in ("{", '{"summary": {}}'):
        (nca / "eval_test.json").write_text(broken)
        with pytest.raises(DataError, match="eval_test.json is not a mednca evaluation result .*--overwrite"):
            compare_runs([nca], isolate=False)
    with pytest.raises(DataError, match="not a trained run folder"):
        compare_runs([tmp_path])


def test_cli_compare(runs, tmp_path: Path, capsys) -> None:
    nca, unet = runs
    out = tmp_path / "cmp.md"
    args = ["compare", str(nca), str(unet), "-o", str(out), "--repeats", "1", "--in-process"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| unet | unet-small |" in printed and out.is_file() and out.with_suffix(".json").is_file()
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.startswith("mednca: error: ")
