"""Dice of a run's saved test predictions before and after keeping only the largest 3D connected
component (what ``largest_component=true`` does at prediction time), against the task's labels.

    python benchmarks/largest_component_posthoc.py RUN [--labels ../shared/data/PROMISE12/labelsTr]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from mednca.pipeline.metrics import dice
from mednca.pipeline.predict import largest_component

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run folder with predictions_test/")
    parser.add_argument("--labels", default=str(ROOT.parent / "shared" / "data" / "PROMISE12" / "labelsTr"))
    args = parser.parse_args()
    before, after = [], []
    for path in sorted((Path(args.run) / "predictions_test").glob("*.nii.gz")):
        pred = np.asanyarray(nib.load(str(path)).dataobj) > 0
        label = np.asanyarray(nib.load(str(Path(args.labels) / path.name)).dataobj) > 0
        before.append(dice(pred, label))
        after.append(dice(largest_component(pred.astype(np.uint8)) > 0, label))
        print(f"{path.name}: {before[-1]:.3f} -> {after[-1]:.3f}")
    print(f"mean over {len(before)} cases: {np.mean(before):.4f} -> {np.mean(after):.4f}")


if __name__ == "__main__":
    main()
