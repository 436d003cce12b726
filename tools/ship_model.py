"""Ship a trained run as a model inside the mednca package (maintainers' tool).

    python tools/ship_model.py RUN --name hippocampus --about tools/cards/hippocampus.json

writes src/mednca/models/NAME.safetensors and NAME.json: the run's best checkpoint and its model
card, whose numbers (test Dice and HD95, the review threshold calibrated on the run's validation
cases, how the flag does on the test cases) are measured here. See docs/models.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mednca.experiments.ship import ship_model

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the trained run folder")
    parser.add_argument("--name", required=True, help="the model's name")
    parser.add_argument("--about", required=True, help="JSON with the card's descriptive fields")
    parser.add_argument("--out", default=str(ROOT / "src" / "mednca" / "models"), help="where the files go")
    parser.add_argument("--ensemble", type=int, default=8, help="stochastic passes of the review (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of those passes (default 0)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    about = json.loads(Path(args.about).read_text())
    card = ship_model(args.run, args.name, about, args.out, ensemble=args.ensemble, seed=args.seed)
    print(json.dumps({k: card[k] for k in ("name", "sha256", "parameters", "test", "review")}, indent=2))


if __name__ == "__main__":
    main()
