"""The Markdown report: tables, figures that exist, the NCA growth GIF, and non-NCA models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from mednca.cli import main
from mednca.pipeline.evaluate import evaluate_run
from mednca.experiments.report import make_report, nca_frames
from mednca.experiments.robustness import run_robustness


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, train_tiny) -> tuple[Path, Path, Path]:
    """(task folder, run evaluated with K=2 on 3 test cases, its robustness output)."""
    root = tmp_path_factory.mktemp("report")
    data, run = train_tiny(root)
    evaluate_run(run, "test", ensemble=2)
    rob = root / "rob"
    run_robustness([run], data, out_dir=rob, severities=1, cases=1, ensemble=2, perturbations=["noise", "zoom_out"])
    return data, run, rob


def links(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


def test_report(evaluated, tmp_path: Path) -> None:
    from PIL import Image

    data, run, rob = evaluated
    out = tmp_path / "report"
    path = make_report([run], out, robustness=[rob])
    assert path == out / "README.md"
    md = path.read_text()
    results = json.loads((run / "eval_test.json").read_text())
    from mednca import load_model

    params = sum(t.numel() for t in load_model(run).parameters())
    row = next(line for line in md.splitlines() if line.startswith("| mednca |"))
    assert f"| {params:,} |" in row
    assert f"{results['summary']['dice']['mean']:.4f} ± {results['summary']['dice']['std']:.4f}" in row
    assert "| 3 |" in row  # test cases
    for section in ("## Comparison", "## Robustness", "## Quality estimate without ground truth",
                    "## Example test cases"):
        assert section in md
    images = links(md)
    assert images and all((out / name).is_file() for name in images)
    assert {"robustness_dice.png", "robustness_quality.png", "quality_vs_dice.png"} <= set(images)
    overlays = [n for n in images if n.startswith("case_")]
    assert len(overlays) == 3 and {"best", "median", "worst"} == {n.split("_")[-1][:-4] for n in overlays}
    for name in images:
        with Image.open(out / name) as im:
            assert im.size[0] <= 1200
    gif = [n for n in images if n.endswith(".gif")]
    assert len(gif) == 1
    with Image.open(out / gif[0]) as im:
        assert im.n_frames == 1 + 2 * 3  # the seed, then 3 steps of each level
    assert "| noise |" in md and "| zoom_out |" in md  # the robustness table
    with pytest.raises(Exception, match="already exists"):
        make_report([run], out)


def test_nca_frames_match_the_model(evaluated) -> None:
    from mednca import load_model

    model = load_model(evaluated[1])
    image = torch.rand(1, 1, 16, 16)
    frames = nca_frames(model, image, torch.Generator().manual_seed(5))
    assert [f[:2] for f in frames] == [(1, 0), (1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    with torch.no_grad():
        expected = torch.sigmoid(model(image, generator=torch.Generator().manual_seed(5)))[0, 0].numpy()
    assert frames[-1][2] == pytest.approx(expected, abs=1e-6)


def test_report_with_compare_and_a_non_nca_model(evaluated, tmp_path: Path, monkeypatch) -> None:
    """A compare JSON's rows become the table; a model that is not a MedNCA gets no GIF."""
    import mednca.experiments.report as report

    real = report.load_model

    class Wrapped(torch.nn.Module):  # any model with .config and .predict_proba
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def predict_proba(self, images, ensemble=1, generator=None):
            return self.inner.predict_proba(images, ensemble, generator)

    monkeypatch.setattr(report, "load_model", lambda p: Wrapped(real(p)))
    data, run, _ = evaluated
    cmp = tmp_path / "cmp.json"
    cmp.write_text(json.dumps({"rows": [{"name": "run", "model": "mednca", "parameters": 3392,
                                         "dice_mean": 0.5, "dice": {"mean": 0.5, "std": 0.1}}]}))
    out = tmp_path / "r"
    md = make_report([run], out, compare=cmp).read_text()
    assert "| name | model | parameters | dice_mean | dice |" in md
    assert "| run | mednca | 3392 | 0.5000 | 0.5000 ± 0.1000 |" in md
    assert not any(n.endswith(".gif") for n in links(md)) and "NCA growth" not in md
    assert all((out / n).is_file() for n in links(md))
    assert "No robustness results" in md


def test_cli_report(evaluated, tmp_path: Path, capsys) -> None:
    data, run, rob = evaluated
    assert main(["report", str(run), "-o", str(tmp_path / "rep"), "--robustness", str(rob)]) == 0
    assert (tmp_path / "rep" / "README.md").is_file()
    bare = tmp_path / "bare"
    (bare).mkdir()
    (bare / "split.json").write_text(json.dumps({"train": [], "test": []}))
    rc = main(["report", str(bare), "-o", str(tmp_path / "rep2")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("mednca: error: ") and "mednca evaluate" in err
