"""Time :func:`mednca.pipeline.predict.predict_volume` of a preset on a synthetic volume (no data needed).

    python benchmarks/volume_time.py --preset paper-prostate --set steps=16 --set normalization=minmax --slices 20 [--save-prob FILE.npy]

Builds the preset's model with seeded random weights (the last layer too, so every step does its
full work), makes a seeded uniform-noise volume of ``image_size`` x ``image_size`` x ``slices``
and predicts it ``--repeats`` + 1 times (the first untimed), flushing denormals and keeping freed
memory as mednca's commands do. Prints the median time; ``--save-prob`` keeps the probability map
so two versions of the code can be compared voxel by voxel.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from mednca.runtime import flush_denormals
from mednca.config import MedNCAConfig, parse_override
from mednca.runtime import retain_freed_memory
from mednca.nn.model import MedNCA
from mednca.pipeline.predict import predict_volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper-prostate")
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--save-prob", help="write the probability map to this .npy file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    args = parser.parse_args()
    flush_denormals()
    retain_freed_memory()
    cfg = MedNCAConfig.preset(args.preset, **dict(parse_override(s) for s in args.set))
    model = MedNCA(cfg, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            if not p.abs().sum():  # the zero-initialised last layers: a fresh model changes nothing
                p.normal_(0, 0.01, generator=g)
    model.eval()
    volume = np.random.default_rng(0).random((cfg.image_size, cfg.image_size, args.slices)).astype(np.float32)
    times = []
    for _ in range(args.repeats + 1):
        t = time.perf_counter()
        pred = predict_volume(model, volume, generator=torch.Generator().manual_seed(5))
        times.append(time.perf_counter() - t)
    print(f"{args.preset}: C{cfg.channels}, {cfg.image_size}² x {args.slices} slices, {cfg.steps} steps/level, "
          f"{torch.get_num_threads()} threads: median {statistics.median(times[1:]):.3f} s "
          f"(runs {', '.join(f'{t:.3f}' for t in times)}; the first untimed)")
    if args.save_prob:
        np.save(args.save_prob, pred.probability)


if __name__ == "__main__":
    main()
