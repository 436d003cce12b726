"""The review flag: its rule, its calibration on validation scores, and the per-case report that
predict writes beside a mask."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from mednca.data.synthetic import make_case
from mednca.errors import OutputExistsError
from mednca.pipeline.predict import predict_file, predict_folder
from mednca.pipeline.quality import ReviewRule, quality_score, review_stats, review_threshold


def test_rule_flags_high_scores_empty_masks_and_nan():
    rule = ReviewRule(0.1, 4)
    assert rule.assess(0.05, 10) == (False, "quality score 0.05 within the threshold 0.1")
    assert rule.assess(0.2, 10)[0] and "above the threshold" in rule.assess(0.2, 10)[1]
    assert rule.assess(0.01, 0) == (True, "no foreground found")
    assert rule.assess(math.nan, 10)[0]


@pytest.mark.parametrize("threshold, ensemble", [(-1.0, 4), (math.inf, 4), (0.1, 1)])
def test_rule_is_validated(threshold, ensemble):
    with pytest.raises(ValueError):
        ReviewRule(threshold, ensemble)


def test_threshold_is_the_validation_quantile():
    scores = [float(i) for i in range(1, 11)]  # 1 .. 10
    assert review_threshold(scores) == pytest.approx(np.quantile(scores, 0.9))
    assert review_threshold([*scores, math.nan]) == pytest.approx(np.quantile(scores, 0.9))
    assert review_threshold(scores, flag_fraction=0.5) == pytest.approx(5.5)
    with pytest.raises(ValueError):
        review_threshold([math.nan])


def test_review_stats_counts_failures_and_good_cases():
    stats = review_stats([True, False, True, False], [0.5, 0.6, 0.9, 0.95])
    assert stats == {"n_cases": 4, "failure_dice": 0.8, "n_failures": 2, "failures_flagged": 1,
                     "n_good": 2, "good_flagged": 1}


SHAPE = (20, 18, 6)


def _scan(path, seed=0):
    nib.save(nib.Nifti1Image(make_case(np.random.default_rng(seed), SHAPE)[0], np.diag([1.0, 2.0, 3.0, 1.0])), str(path))
    return path


def test_predict_file_writes_the_report(tmp_path, random_model):
    model = random_model()
    scan = _scan(tmp_path / "scan.nii.gz")
    lines = []
    rule = ReviewRule(threshold=1e9, ensemble=3)
    written = predict_file(model, scan, tmp_path / "out" / "mask.nii.gz", ensemble=3, seed=2, review=rule,
                           log=lines.append)
    report_path = tmp_path / "out" / "mask.json"
    assert report_path in written
    report = json.loads(report_path.read_text())
    mask = np.asanyarray(nib.load(str(tmp_path / "out" / "mask.nii.gz")).dataobj)
    prob = np.asanyarray(nib.load(str(tmp_path / "out" / "mask_prob.nii.gz")).dataobj)
    std = np.asanyarray(nib.load(str(tmp_path / "out" / "mask_std.nii.gz")).dataobj)
    assert report["volume_ml"] == pytest.approx(mask.sum() * 6.0 / 1000, abs=1e-4)  # 1 x 2 x 3 mm voxels
    assert report["quality"] == pytest.approx(quality_score(prob, std), rel=1e-5)
    assert report["review"] is bool(mask.sum() == 0)  # the threshold is huge: only an empty mask is flagged
    assert report["ensemble"] == 3 and report["seed"] == 2 and report["review_threshold"] == 1e9
    assert lines == [f"scan.nii.gz: {report['volume_ml']:.2f} mL, quality {report['quality']:.4g} - "
                     + ("looks fine" if not report["review"] else f"please review ({report['reason']})")]
    strict = predict_file(model, scan, tmp_path / "strict.nii.gz", ensemble=3, seed=2, review=ReviewRule(0.0, 3))
    assert json.loads(strict[-1].read_text())["review"] is True
    with pytest.raises(OutputExistsError):
        predict_file(model, scan, tmp_path / "out" / "mask.nii.gz", ensemble=3, review=rule)


def test_predict_folder_writes_a_report_per_case(tmp_path, random_model):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(2):
        _scan(folder / f"case_{i}.nii.gz", seed=i)
    lines = []
    predict_folder(random_model(), folder, tmp_path / "out", ensemble=2, review=ReviewRule(1e9, 2), log=lines.append)
    for i in range(2):
        assert json.loads((tmp_path / "out" / f"case_{i}.json").read_text())["ensemble"] == 2
    assert [line.split(":")[0] for line in lines] == ["case_0", "case_1"]
