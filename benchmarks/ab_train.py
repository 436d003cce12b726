"""A/B probe: mednca and the plain Med-NCA training iterations alternating in one process.

    python benchmarks/ab_train.py train-hippocampus-c16 8 [--no-checkpoint]

Runs a ``train-*`` case of :mod:`mednca.experiments.bench` (same weights, same generator seed for both),
one warm-up iteration each, then N iterations of each alternating, and prints the medians and
their ratio. Denormals are flushed and freed memory kept, as mednca's commands do. Used to
compare code variants within minutes of each other; the tables come from ``mednca bench``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from mednca.experiments.bench.cases import bench_cases, bench_model
from mednca.experiments.bench.cases import case_inputs as _inputs
from mednca.nn.reference import PlainMedNCA
from mednca.runtime import flush_denormals
from mednca.pipeline.losses import dice_bce_loss
from mednca.runtime import retain_freed_memory


def iteration(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, config):
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)

    def run() -> float:
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits, target = model(images, labels, generator=g)
        dice_bce_loss(logits, target).backward()
        opt.step()
        return time.perf_counter() - t
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case")
    parser.add_argument("n", type=int, nargs="?", default=6)
    parser.add_argument("--no-checkpoint", action="store_true", help="turn gradient checkpointing off")
    default_data = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus"
    parser.add_argument("--data", default=str(default_data),
                        help="MSD hippocampus task folder (default ../shared/data/Task04_Hippocampus)")
    args = parser.parse_args()
    flush_denormals()
    retain_freed_memory()
    case = {c.name: c for c in bench_cases()}[args.case]
    if args.no_checkpoint:
        case = dataclasses.replace(case, config=dataclasses.replace(case.config, grad_checkpoint=False))
    images, labels, _, _ = _inputs(case, args.data)
    ours = bench_model(case.config, 0)
    a = iteration(ours, images, labels, case.config)
    b = iteration(PlainMedNCA.from_mednca(ours), images, labels, case.config)
    a(), b()
    ta, tb = [], []
    for _ in range(args.n):
        ta.append(a())
        tb.append(b())
    ma, mb = statistics.median(ta), statistics.median(tb)
    print(f"{args.case}: mednca {ma:.3f} s, plain {mb:.3f} s, ratio {mb / ma:.2f} (median of {args.n})")


if __name__ == "__main__":
    main()
