"""Train a preset on a shared data split on this CPU; report test Dice and wall time.

    python benchmarks/train_benchmark.py --task hippocampus --eval-at 10 30 --seed 0
    python benchmarks/train_benchmark.py --task prostate --seed 0   # evaluates at 20 and 60 minutes

Reads ../shared/data in place (never copies it). The run goes to
benchmarks/out/<task>-<preset>-s<seed>[-tag]/. With ``--eval-at 10 30`` the run trains to
10 minutes, its best checkpoint (by validation Dice) is evaluated on the test split, then it
resumes to 30 minutes of training and is evaluated again: evaluation time is not training time.
One JSON line per evaluation is printed and appended to benchmarks/out/train_results.jsonl,
with the updates per minute and the process's peak resident memory so far (training and
evaluation, ``peak_rss_mb``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

from mednca.runtime import flush_denormals
from mednca.runtime import retain_freed_memory
from mednca.config import MedNCAConfig, parse_override
from mednca.pipeline.evaluate import evaluate_run
from mednca.pipeline.train import train

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
TASKS = {
    "hippocampus": (SHARED / "Task04_Hippocampus", SHARED / "splits" / "Task04_Hippocampus_70_30.json"),
    "prostate": (SHARED / "PROMISE12", SHARED / "splits" / "PROMISE12_70_30.json"),
}

#: Default evaluation points (training minutes) of each task: the issues' targets.
EVAL_AT = {"hippocampus": [10, 30], "prostate": [20, 60]}


def trained_seconds(run: Path) -> float:
    """Training wall time so far, from the run's resume state (0 if there is none)."""
    from safetensors import safe_open

    state = run / "checkpoints" / "last.state.safetensors"
    if not state.exists():
        return 0.0
    with safe_open(str(state), framework="pt") as f:
        return float(json.loads(f.metadata()["state"])["elapsed_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="hippocampus")
    parser.add_argument("--preset", help="default: the task's name")
    parser.add_argument("--eval-at", type=float, nargs="+",
                        help="training minutes at which to evaluate on the test split (default: "
                             "hippocampus 10 30, prostate 20 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tag", default="", help="suffix of the run folder name")
    parser.add_argument("--resume", action="store_true",
                        help="continue the existing run folder (e.g. after a crash) instead of starting over")
    parser.add_argument("--skip-first-eval", action="store_true",
                        help="with --resume: the first --eval-at budget was already evaluated")
    parser.add_argument("--ensemble", type=int, nargs="+", default=[1],
                        help="stochastic passes at test time; several values evaluate each (default 1)")
    args = parser.parse_args()
    flush_denormals()  # as `mednca train` does (the library's train() leaves the process setting alone)
    retain_freed_memory()  # likewise

    data, split = TASKS[args.task]
    args.eval_at = args.eval_at or EVAL_AT[args.task]
    preset = args.preset or args.task
    config = MedNCAConfig.preset(preset, **dict(parse_override(s) for s in args.set))
    name = f"{args.task}-{preset}-s{args.seed}{('-' + args.tag) if args.tag else ''}"
    out = HERE / "out" / name
    results_file = HERE / "out" / "train_results.jsonl"
    for i, minutes in enumerate(sorted(args.eval_at)):
        resume = i > 0 or args.resume
        budget = minutes - trained_seconds(out) / 60 if resume else minutes
        result = train(data, out, config, seed=args.seed, split_file=split, max_minutes=max(budget, 0.0),
                       resume=resume, overwrite=not resume, progress=False)
        if i == 0 and args.skip_first_eval:
            continue
        for k in args.ensemble:
            t0 = time.perf_counter()
            results, _ = evaluate_run(out, "test", ensemble=k, overwrite=True)
            d = results["summary"]["dice"]
            row = {"task": args.task, "preset": preset, "seed": args.seed, "overrides": args.set,
                   "budget_min": minutes, "train_min": round(result.elapsed_s / 60, 2),
                   "epochs": result.epochs_done, "batches": result.batches_done,
                   "batches_per_min": round(result.batches_done / max(result.elapsed_s / 60, 1e-9), 1),
                   "best_val_dice": round(result.best_val_dice, 4), "ensemble": k,
                   "test_dice_mean": round(d["mean"], 4), "test_dice_std": round(d["std"], 4),
                   "test_cases": d["n"], "test_hd95_mm": round(results["summary"]["hd95_mm"]["mean"], 3),
                   "eval_s": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
                   "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                   "cpu": platform.processor() or platform.machine(), "load_avg": os.getloadavg()[0],
                   "run": str(out.relative_to(HERE.parent))}
            print(json.dumps(row), flush=True)
            results_file.parent.mkdir(parents=True, exist_ok=True)
            with results_file.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
