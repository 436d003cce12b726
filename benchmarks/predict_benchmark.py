"""`mednca predict` on the hippocampus test split: wall time per volume, mednca vs plain PyTorch.

    python benchmarks/predict_benchmark.py [--run benchmarks/out/hippocampus-hippocampus-s0]

Links the split's test images (78 for the shared hippocampus split) into a temporary folder
(symlinks; the data is never copied) and predicts them three ways, one after the other, with the
run's best checkpoint and the default seed:

1. ``mednca predict CKPT FOLDER -o OUT`` as a user runs it (a fresh process: Python start-up,
   imports, reading, resampling, inference, writing the NIfTI masks);
2. :func:`mednca.pipeline.predict.predict_folder` in this process with the mednca model;
3. the same ``predict_folder`` with :class:`mednca.nn.reference.PlainMedNCA` (the plain PyTorch
   Med-NCA of the benchmark suite, same weights, same fire masks) behind the same I/O.

2 and 3 are timed after one untimed warm-up volume each; their masks are compared voxel by voxel
(the same math, so they agree up to voxels whose probability is within float rounding of 0.5).
This process flushes denormals and keeps freed memory as ``mednca predict`` does (for both 2 and
3). Results go to benchmarks/predict_results.json and are printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mednca.nn.reference import PlainMedNCA
from mednca import load_model
from mednca.runtime import flush_denormals
from mednca.runtime import retain_freed_memory
from mednca.pipeline.predict import predict_folder

HERE = Path(__file__).resolve().parent


class PlainRuntime:
    """A :class:`PlainMedNCA` behind predict_folder's runtime interface (one pass, seeded)."""

    def __init__(self, model) -> None:
        self.config = model.config
        self.plain = PlainMedNCA.from_mednca(model).eval()

    def infer(self, ensemble: int = 1, seed: int = 0):
        if ensemble != 1:
            raise ValueError("the plain runtime here does one pass")
        g = torch.Generator().manual_seed(seed)  # as predict_volume's generator for the same seed

        @torch.no_grad()
        def call(x):
            prob = torch.sigmoid(self.plain(x, generator=g))
            return prob, torch.zeros_like(prob)
        return call


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=HERE / "out" / "hippocampus-hippocampus-s0")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, default=HERE / "predict_results.json")
    args = parser.parse_args()
    flush_denormals()  # as `mednca predict` does, for both in-process rows
    retain_freed_memory()

    ckpt = args.run / "checkpoints" / "best.safetensors"
    run = json.loads((args.run / "run.json").read_text())
    ids = json.loads((args.run / "split.json").read_text())[args.split]
    images = Path(run["data"]) / "imagesTr"
    tmp = Path(tempfile.mkdtemp(prefix="mednca-predict-bench-"))
    folder = tmp / "images"
    folder.mkdir()
    for case_id in ids:
        (folder / f"{case_id}.nii.gz").symlink_to(images / f"{case_id}.nii.gz")
    n = len(ids)
    print(f"{n} {args.split} volumes of {images.parent.name}, {torch.get_num_threads()} threads", flush=True)

    cli = timed(lambda: subprocess.run([sys.executable, "-m", "mednca", "predict", str(ckpt), str(folder),
                                        "-o", str(tmp / "cli")], check=True, capture_output=True))
    print(f"mednca predict (CLI, fresh process): {cli:.1f} s", flush=True)
    model = load_model(ckpt).eval()
    warm = tmp / "warm-up"  # first calls pay one-off costs (allocator, oneDNN kernels): not timed
    warm.mkdir()
    (warm / f"{ids[0]}.nii.gz").symlink_to(images / f"{ids[0]}.nii.gz")
    predict_folder(model, warm, tmp / "warm-up-mednca")
    predict_folder(PlainRuntime(model), warm, tmp / "warm-up-plain")
    ours = timed(lambda: predict_folder(model, folder, tmp / "mednca"))
    print(f"predict_folder, mednca: {ours:.1f} s", flush=True)
    plain = timed(lambda: predict_folder(PlainRuntime(model), folder, tmp / "plain"))
    print(f"predict_folder, plain: {plain:.1f} s", flush=True)

    import nibabel as nib
    differing = total = 0
    for c in ids:
        a = np.asarray(nib.load(tmp / "mednca" / f"{c}.nii.gz").dataobj)
        b = np.asarray(nib.load(tmp / "plain" / f"{c}.nii.gz").dataobj)
        differing, total = differing + int(np.count_nonzero(a != b)), total + a.size
    same = differing == 0
    result = {
        "volumes": n, "checkpoint": str(ckpt.relative_to(HERE.parent)) if ckpt.is_relative_to(HERE.parent) else str(ckpt),
        "preset": model.config.name, "steps": model.config.steps, "threads": torch.get_num_threads(),
        "cli_s": round(cli, 2), "cli_ms_per_volume": round(1000 * cli / n, 1),
        "mednca_s": round(ours, 2), "mednca_ms_per_volume": round(1000 * ours / n, 1),
        "plain_s": round(plain, 2), "plain_ms_per_volume": round(1000 * plain / n, 1),
        "speedup": round(plain / ours, 2), "identical_masks": same,
        "differing_voxels": differing, "voxels": total,
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "load_avg_end": os.getloadavg()[0], "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n| way | total s | ms / volume |\n|---|---|---|\n"
          f"| `mednca predict` (CLI, incl. start-up and imports) | {cli:.1f} | {1000 * cli / n:.0f} |\n"
          f"| predict_folder, mednca | {ours:.1f} | {1000 * ours / n:.0f} |\n"
          f"| predict_folder, plain PyTorch Med-NCA | {plain:.1f} | {1000 * plain / n:.0f} |\n\n"
          f"speed-up {plain / ours:.2f}×, masks differing in {differing} of {total} voxels")


if __name__ == "__main__":
    main()
