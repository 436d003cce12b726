"""mednca.experiments.bench and mednca.nn.reference: the plain reference agrees with MedNCA, FLOP
counting, the cases, the measuring processes, the tables, and a --quick CLI run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from mednca.cli import main
from mednca.config import MedNCAConfig
from mednca.errors import DataError, MedNCAError
from mednca.experiments.bench.cases import (Case, bench_cases, bench_model, case_inputs, cell_step_flops, load_volume,
                                            model_flops, select_cases)
from mednca.experiments.bench.check import check_case
from mednca.experiments.bench.measure import run_one
from mednca.experiments.bench.options import EXIT_MEMORY, Options
from mednca.experiments.bench.run import case_summary, ratios, run_benchmark, run_child
from mednca.experiments.bench.tables import markdown
from mednca.nn.reference import PlainMedNCA, mednca_to_plain_state, plain_name
from mednca.pipeline.losses import dice_bce_loss


def _config(**kw) -> MedNCAConfig:
    base = dict(channels=6, hidden=12, steps=3, image_size=16, patch_size=8, scale=4, batch_size=3)
    return MedNCAConfig(**{**base, **kw})


def _data(b: int = 3, side: int = 16):
    g = torch.Generator().manual_seed(5)
    images = torch.rand((b, 1, side, side), generator=g)
    return images, (images > 0.5).float()


def _pair(config: MedNCAConfig):
    model = bench_model(config, seed=3)
    for level in (model.level1, model.level2):
        assert torch.count_nonzero(level.fc1.weight) == level.fc1.weight.numel()  # non-zero last layer
    return model, PlainMedNCA.from_mednca(model)


@pytest.mark.parametrize("fg_patch_prob", [0.0, 0.7])
def test_plain_matches_mednca_training(fg_patch_prob):
    model, plain = _pair(_config(fg_patch_prob=fg_patch_prob))
    images, labels = _data()
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    out_m, lab_m = model(images, labels, generator=g1)
    out_p, lab_p = plain(images, labels, generator=g2)
    assert torch.equal(lab_m, lab_p)  # the same patches
    assert torch.equal(g1.get_state(), g2.get_state())  # the same random calls
    torch.testing.assert_close(out_m, out_p, rtol=1e-4, atol=1e-6)
    assert out_m.abs().max() > 0
    dice_bce_loss(out_m, lab_m).backward()
    dice_bce_loss(out_p, lab_p).backward()
    plain_params = dict(plain.named_parameters())
    for name, p in model.named_parameters():
        q = plain_params[plain_name(name)]
        assert p.grad.abs().max() > 0, name
        torch.testing.assert_close(p.grad.reshape(q.grad.shape), q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_plain_matches_mednca_inference():
    model, plain = _pair(_config(steps=4))
    images, _ = _data(2)
    model.eval()
    plain.eval()
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    with torch.no_grad():
        out_m = model(images, generator=g1)
        out_p = plain(images, generator=g2)
        # and the next pass (new masks from the same generator) too
        torch.testing.assert_close(model(images, generator=g1), plain(images, generator=g2), rtol=1e-4, atol=1e-6)
    assert out_m.shape == (2, 1, 16, 16)
    torch.testing.assert_close(out_m, out_p, rtol=1e-4, atol=1e-6)
    # a different generator seed gives different masks, hence different outputs
    with torch.no_grad():
        other = plain(images, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(other, out_p)


def test_check_case_reports_agreement():
    config = _config()
    images, labels = _data()
    train = check_case(Case("t", "train", config), images, labels)
    assert train["ok"] and train["grads_ok"] and train["same_patches"] and train["same_generator_state"]
    assert train["max_abs_diff"] <= 1e-4 * train["max_abs_output"] + 1e-6
    infer = check_case(Case("i", "infer", config), images, None)
    assert infer["ok"] and "grads_ok" not in infer


def test_state_mapping():
    model = bench_model(_config())
    state = mednca_to_plain_state(model.state_dict())
    assert set(state) == {f"levels.{i}.{layer}.{p}" for i in (0, 1) for layer, p in
                          [("p0", "weight"), ("p0", "bias"), ("p1", "weight"), ("p1", "bias"),
                           ("fc0", "weight"), ("fc0", "bias"), ("fc1", "weight")]}
    assert state["levels.1.fc0.weight"].shape == (12, 18)
    assert torch.equal(state["levels.0.fc1.weight"], model.level1.fc1.weight.flatten(1))
    with pytest.raises(ValueError):
        plain_name("level3.p0.weight")


def test_flop_counts():
    # C=16, hidden=128: 2*(2*16*16*9) + 2*(48*128) + 2*(128*16) = 9216 + 12288 + 4096
    assert cell_step_flops(16, 128) == 25_600
    assert cell_step_flops(32, 128) == 36_864 + 24_576 + 8_192
    cfg = MedNCAConfig.preset("hippocampus", steps=64, batch_size=48)
    # training: 64 steps x 48 x (16² level-1 cells + 16² patch cells) x 25600, x3 for fwd+bwd
    assert model_flops(cfg, 48, 64, train=True) == 3 * 64 * 48 * (256 + 256) * 25_600 == 120_795_955_200
    # inference of one slice: level 2 on all 64² cells
    assert model_flops(cfg, 1, 64) == 64 * (256 + 4096) * 25_600 == 7_130_316_800


def test_cases_and_selection():
    full, quick = bench_cases(), bench_cases(quick=True)
    assert [c.name for c in full] == [c.name for c in quick]
    names = {c.name for c in full}
    assert {"train-hippocampus-c16", "train-hippocampus-c32", "train-prostate-c32", "infer-slice64", "infer-volume",
            "infer-slice256", "scale-side512", "scale-steps128", "volume-default-1thread"} <= names
    byname = {c.name: c for c in full}
    p = byname["train-prostate-c32"].config
    assert (p.channels, p.hidden, p.steps, p.image_size, p.patch_size, p.batch_size) == (32, 128, 64, 256, 64, 20)
    assert p.grad_checkpoint  # as the prostate preset trains; the -nockpt twin runs as plain does
    twin = byname["train-prostate-c32-nockpt"].config
    assert twin == dataclasses.replace(p, grad_checkpoint=False)
    h = byname["train-hippocampus-c16"].config
    assert (h.channels, h.steps, h.image_size, h.patch_size, h.batch_size) == (16, 64, 64, 16, 48)
    assert byname["volume-default-1thread"].config == MedNCAConfig.preset("hippocampus")
    assert [c.name for c in select_cases(full, ["train-prostate-c32"])] == ["train-prostate-c32"]
    assert {c.name for c in select_cases(full, ["infer-*"])} == {"infer-slice64", "infer-volume", "infer-slice256"}
    assert len(select_cases(full, ["side,steps"])) == 7
    with pytest.raises(MedNCAError):
        select_cases(full, ["nothing-like-this"])


def test_volume_case_in_process():
    threads = torch.get_num_threads()
    try:
        out = run_one("volume-default-1thread", "mednca", Options(quick=True))
    finally:
        torch.set_num_threads(threads)
    assert out["threads"] == 1 and out["repeats"] == 1
    assert out["input"]["slices"] == out["input"]["shape"][2]
    assert out["peak_rss_mb"] >= out["rss_after_import_mb"] > 0


def test_volume_source(tmp_path):
    data, info = load_volume()  # no --data: the synthetic volume
    assert info == {"source": "synthetic", "case": None, "shape": [35, 51, 35], "read_s": None}
    assert data.shape == (35, 51, 35)
    with pytest.raises(DataError):
        load_volume(tmp_path)  # an explicit folder without images is an error, not the synthetic volume
    case = {c.name: c for c in bench_cases(quick=True)}["infer-volume"]
    images, labels, volume, info = case_inputs(case, None)
    assert labels is None and volume.shape == (35, 51, 35)
    assert images.shape == (info["slices"], 1, case.config.image_size, case.config.image_size)
    with pytest.raises(DataError):  # a wrong --data fails before anything is measured
        run_benchmark(Options(quick=True, data=str(tmp_path)), ["infer-volume"])


def _fake_results() -> dict:
    cases = {c.name: c for c in bench_cases(quick=True)}
    train = case_summary(cases["train-hippocampus-c16"], {
        "check": {"ok": True, "max_abs_diff": 2e-7, "max_abs_output": 1.0, "grad_max_rel_diff": 3e-6},
        "mednca": {"median_s": 0.5, "peak_rss_mb": 300.0, "repeats": 3},
        "plain": {"median_s": 1.0, "peak_rss_mb": 600.0, "repeats": 3}}, 100.0, None)
    info = {"source": "synthetic", "case": None, "shape": [35, 51, 35], "read_s": None, "slices": 35}
    volume = case_summary(cases["volume-default-1thread"], {"mednca": {
        "median_s": 0.8, "peak_rss_mb": 180.0, "rss_after_import_mb": 150.0, "repeats": 1, "input": info}},
        100.0, info)
    meta = {"mednca_version": "x", "torch_version": "y", "threads": 2, "cpu": "cpu", "cpu_count": 2,
            "started": "now", "loadavg_start": [0.5, 0.5, 0.5], "warmup": 1, "quick": True, "max_rss_mb": 2048.0,
            "flush_denormal": True, "retain_memory": True, "data": None}
    return {"meta": meta, "matmul": {"n": 256, "gflops": 100.0, "repeats": 3}, "cases": [train, volume],
            "ratios": ratios([train, volume]), "failures": [], "memory_aborts": ["train-prostate-c32/plain"]}


def test_tables_report_numbers_only():
    results = _fake_results()
    train, volume = results["cases"]
    assert train["speedup"] == 2.0 and train["memory_ratio"] == 2.0
    assert train["mednca"]["effective_gflops"] == pytest.approx(train["flops"] / 0.5 / 1e9)
    assert "targets" not in volume
    assert results["ratios"]["train_speedup"] == {"train-hippocampus-c16": 2.0}
    text = markdown(results)
    for gone in ("target", "✓", "✗"):
        assert gone not in text
    assert "Volume cases: a synthetic 35×51×35 volume (no --data)." in text
    assert "| train-hippocampus-c16 | C4 h8 S2 16² patch 8² b2 | 500 | 1000 | 2.00× |" in text
    assert "| synthetic 35×51×35 | C16 h8 S2 16² ×35 slices | 0.800 | 180 | 150 | 30 |" in text
    assert "mem-guard: aborted at the memory limit (2.0 GB): train-prostate-c32/plain." in text


def test_run_child_errors_and_memory_abort():
    failed = run_child("no-such-case", "mednca", Options(quick=True))
    assert "unknown case" in failed["error"] and "memory_abort" not in failed and failed["process_wall_s"] > 0
    aborted = run_child("infer-slice64", "mednca", Options(quick=True, max_rss_mb=1.0))
    assert aborted["memory_abort"] and f"exit {EXIT_MEMORY}" in aborted["error"]


def test_bench_arguments_do_not_import_torch():
    code = ("import argparse, sys\n"
            "from mednca.experiments.bench.args import add_bench_arguments\n"
            "p = argparse.ArgumentParser()\n"
            "add_bench_arguments(p)\n"
            "args = p.parse_args(['--quick', '--only', 'infer-*', '--max-rss-gb', '2'])\n"
            "assert args.quick and args.only == ['infer-*'] and args.max_rss_gb == 2.0\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_quick_end_to_end(tmp_path, capsys):
    js, md = tmp_path / "bench.json", tmp_path / "bench.md"
    rc = main(["bench", "--quick", "--threads", "1", "--only", "train-hippocampus-c16,infer-slice64",
               "--json-out", str(js), "--markdown-out", str(md)])
    assert rc == 0
    results = json.loads(js.read_text())
    assert [c["name"] for c in results["cases"]] == ["train-hippocampus-c16", "infer-slice64"]
    assert results["matmul"]["gflops"] > 0 and results["failures"] == []
    for case in results["cases"]:
        assert case["check"]["ok"]
        assert case["speedup"] > 0 and case["flops"] > 0
        for impl in ("mednca", "plain"):
            assert case[impl]["median_s"] > 0 and case[impl]["peak_rss_mb"] > 0
            assert case[impl]["effective_gflops"] > 0 and case[impl]["pct_of_matmul"] > 0
    assert "grad_max_rel_diff" in results["cases"][0]["check"]
    ratios = results["ratios"]
    assert set(ratios["train_speedup"]) == {"train-hippocampus-c16"}
    assert set(ratios["infer_speedup"]) == {"infer-slice64"}
    assert set(ratios["effective_pct_of_matmul"]) == {"train-hippocampus-c16", "infer-slice64"}
    assert ratios["train_speedup_geomean"] > 0 and ratios["infer_speedup_geomean"] > 0
    text = md.read_text()
    for fragment in ("train-hippocampus-c16", "infer-slice64", "speed-up", "GFLOP/s", "% of the matmul rate"):
        assert fragment in text
    assert "target" not in text and "Volume cases" not in text  # no volume case ran
    assert "train-hippocampus-c16" in capsys.readouterr().out  # the tables are printed too


def test_onnx_cases_report_file_size_and_time():
    pytest.importorskip("onnxruntime")
    names = [c.name for c in bench_cases(quick=True) if c.group == "onnx"]
    assert names == ["onnx-slice64", "onnx-slice64-fp16", "onnx-slice64-int8"]
    threads = torch.get_num_threads()
    try:
        runs = {name: run_one(name, "mednca", Options(quick=True)) for name in names}
    finally:
        torch.set_num_threads(threads)
    for out in runs.values():
        assert out["median_s"] > 0 and out["file_bytes"] > 0
    assert runs["onnx-slice64-int8"]["file_bytes"] < runs["onnx-slice64"]["file_bytes"]
    assert runs["onnx-slice64-fp16"]["file_bytes"] < runs["onnx-slice64"]["file_bytes"]
    with pytest.raises(MedNCAError):  # no plain counterpart
        run_one("onnx-slice64", "plain", Options(quick=True))
