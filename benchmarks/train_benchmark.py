"""Train a preset on a shared data split on this CPU and report test Dice and wall time.

    python benchmarks/train_benchmark.py --task hippocampus --minutes 30 --seed 0
    python benchmarks/train_benchmark.py --task prostate --minutes 30 --seed 0

Reads ../shared/data in place (never copies it). Writes the run folder to
benchmarks/out/<task>-<preset>-<minutes>min-s<seed>/ and appends one JSON line per run to
benchmarks/out/train_results.jsonl. Evaluation checkpoints: with --eval-at 10 30, the run is
trained to 10 minutes, its best checkpoint evaluated on the test split, then resumed to 30.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from mednca.config import MedNCAConfig, parse_override
from mednca.evaluate import evaluate_run
from mednca.train import train

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
TASKS = {
    "hippocampus": (SHARED / "Task04_Hippocampus", SHARED / "splits" / "Task04_Hippocampus_70_30.json"),
    "prostate": (SHARED / "PROMISE12", SHARED / "splits" / "PROMISE12_70_30.json"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="hippocampus")
    parser.add_argument("--preset", help="default: the task's name")
    parser.add_argument("--eval-at", type=float, nargs="+", default=[10, 30],
                        help="training minutes at which to evaluate on the test split (default 10 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tag", default="", help="suffix of the run folder name")
    parser.add_argument("--ensemble", type=int, default=1)
    args = parser.parse_args()

    data, split = TASKS[args.task]
    preset = args.preset or args.task
    config = MedNCAConfig.preset(preset, **dict(parse_override(s) for s in args.set))
    name = f"{args.task}-{preset}-s{args.seed}{('-' + args.tag) if args.tag else ''}"
    out = HERE / "out" / name
    log_path = HERE / "out" / "train_results.jsonl"
    resume = False
    for minutes in sorted(args.eval_at):
        already = json.loads((out / "checkpoints" / "last.state.safetensors").exists() and "1" or "0")
        budget = minutes - (_elapsed(out) / 60 if resume else 0)
        t0 = time.perf_counter()
        result = train(data, out, config, seed=args.seed, split_file=split, max_minutes=budget,
                       resume=resume, overwrite=not resume, progress=False)
        wall = time.perf_counter() - t0
        t1 = time.perf_counter()
        results, _ = evaluate_run(out, "test", ensemble=args.ensemble, overwrite=True)
        eval_s = time.perf_counter() - t1
        d = results["summary"]["dice"]
        row = {"task": args.task, "preset": preset, "seed": args.seed, "overrides": args.set,
               "budget_min": minutes, "train_min": round(result.elapsed_s / 60, 2),
               "epochs": result.epochs_done, "batches": result.batches_done,
               "best_val_dice": round(result.best_val_dice, 4), "test_dice_mean": round(d["mean"], 4),
               "test_dice_std": round(d["std"], 4), "test_cases": d["n"],
               "test_hd95_mm": round(results["summary"]["hd95_mm"]["mean"], 3),
               "eval_s": round(eval_s, 1), "ensemble": args.ensemble, "threads": torch.get_num_threads(),
               "cpu": platform.processor() or platform.machine(), "run": str(out), "already": already,
               "session_wall_s": round(wall, 1)}
        print(json.dumps(row), flush=True)
        with log_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        resume = True


def _elapsed(out: Path) -> float:
    import csv

    rows = list(csv.DictReader((out / "log.csv").open()))
    return float(rows[-1]["elapsed_s"]) if rows else 0.0


if __name__ == "__main__":
    main()
