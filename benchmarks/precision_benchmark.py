"""What fp16 and int8 weights cost: test Dice, ONNX file size and onnxruntime time.

    python benchmarks/precision_benchmark.py [--run benchmarks/out/hippocampus-hippocampus-s0]

For each weight precision (fp32, fp16, int8 with one scale per output channel; see
:mod:`mednca.edge.quantize`) this

1. rounds the run's best checkpoint's weights (:func:`mednca.edge.quantize.round_weights`), predicts
   the split's test volumes with :func:`mednca.pipeline.predict.predict_folder` (same seed, so the same fire
   masks for every precision: only the weights differ) and scores them with
   :func:`mednca.pipeline.evaluate.evaluate_folders` (Dice on hard 3D masks, the label grid);
2. exports the model to ONNX with those weights (``mednca export --weights P``) and reports the
   file size and the onnxruntime time per 64x64 slice (batch of 35 slices, a typical volume).

The test images and labels are linked (symlinks, never copied) into a temporary folder. Writes
benchmarks/precision_results.json and prints a Markdown table. The issue's bar: a Dice loss
below 0.005 against fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mednca import load_model
from mednca.pipeline.evaluate import evaluate_folders
from mednca.edge.export import export_model, onnx_benchmark
from mednca.pipeline.predict import predict_folder
from mednca.edge.quantize import WEIGHT_PRECISIONS, round_weights, weight_stats

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=HERE / "out" / "hippocampus-hippocampus-s0")
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "precision_results.json")
    args = parser.parse_args()

    ckpt = args.run / "checkpoints" / "best.safetensors"
    run = json.loads((args.run / "run.json").read_text())
    ids = json.loads((args.run / "split.json").read_text())[args.split]
    data = Path(run["data"])
    tmp = Path(tempfile.mkdtemp(prefix="mednca-precision-bench-"))
    for sub in ("imagesTr", "labelsTr"):
        (tmp / sub).mkdir()
        for case_id in ids:
            (tmp / sub / f"{case_id}.nii.gz").symlink_to(data / sub / f"{case_id}.nii.gz")
    model = load_model(ckpt).eval()
    print(f"{len(ids)} {args.split} volumes of {data.name}, {torch.get_num_threads()} threads", flush=True)

    rows, dice = [], {}
    for precision in WEIGHT_PRECISIONS:
        low = round_weights(model, precision).eval()
        start = time.perf_counter()
        predict_folder(low, tmp / "imagesTr", tmp / f"pred-{precision}", seed=args.seed)
        seconds = time.perf_counter() - start
        result = evaluate_folders(tmp / f"pred-{precision}", tmp / "labelsTr")
        dice[precision] = np.array([c["dice"] for c in result["cases"]])
        onnx_path = export_model(model, tmp / f"model-{precision}.onnx", weights=precision)
        timing = onnx_benchmark(onnx_path, size=64, batch=35, repeats=5, warmup=1)
        rows.append({"weights": precision, **weight_stats(model, precision),
                     "test_dice_mean": float(dice[precision].mean()), "test_dice_std": float(dice[precision].std()),
                     "predict_s": round(seconds, 1), "onnx_bytes": onnx_path.stat().st_size,
                     "onnx_ms_per_slice": round(timing["ms_per_slice"], 2)})
        print(f"{precision}: Dice {dice[precision].mean():.4f}, ONNX {onnx_path.stat().st_size:,} B, "
              f"{timing['ms_per_slice']:.2f} ms/slice", flush=True)
    for row in rows:
        diff = dice[row["weights"]] - dice["fp32"]
        row.update(dice_change_mean=float(diff.mean()), dice_change_min=float(diff.min()),
                   dice_change_max=float(diff.max()), cases_changed=int((np.abs(diff) > 0).sum()),
                   dice_loss_below_0_005=bool(-diff.mean() < 0.005))
    result = {"checkpoint": str(ckpt.relative_to(HERE.parent)) if ckpt.is_relative_to(HERE.parent) else str(ckpt),
              "split": args.split, "volumes": len(ids), "seed": args.seed, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "load_avg_end": os.getloadavg()[0], "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| weights | test Dice (78 vol.) | Dice change vs fp32: mean [min, max] | cases changed | "
          "max rel. weight error | ONNX file | onnxruntime ms / 64² slice |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['weights']} | {r['test_dice_mean']:.4f} ± {r['test_dice_std']:.3f} | "
              f"{r['dice_change_mean']:+.5f} [{r['dice_change_min']:+.4f}, {r['dice_change_max']:+.4f}] | "
              f"{r['cases_changed']} | {r['max_rel_error']:.1e} | {r['onnx_bytes'] / 1024:.0f} KiB | "
              f"{r['onnx_ms_per_slice']:.2f} |")


if __name__ == "__main__":
    main()
