"""Probe whether a prostate recipe starts to learn: N training batches, loss and fg/bg probabilities.

    python benchmarks/prostate_probe.py v2-p99 60 norm=p99
    python benchmarks/prostate_probe.py v1-empty0.1-p99 60 empty_slice_prob=0.1 norm=p99

Trains the ``prostate`` preset (plus ``KEY=VALUE`` overrides) from seed 0 on the first 26 training
cases of the shared PROMISE12 split, one torch thread, and prints one JSON line every 10 batches:
the mean loss of those batches and the mean predicted probability on foreground and background
pixels of the last batch's patches. ``norm=p99`` divides each min-max normalised slice by its 99th
percentile and clips to [0, 1] (what ``normalization=percentile`` does, up to the minimum). A
recipe that learns shows the loss falling and ``p_fg`` pulling away from ``p_bg``.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from train_benchmark import TASKS

from mednca import build_model
from mednca.config import MedNCAConfig, parse_override
from mednca.data.cases import find_cases
from mednca.data.slices import load_slices
from mednca.pipeline.losses import dice_bce_loss
from mednca.pipeline.train import epoch_order


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    variant, n_batches, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    norm = next((a.split("=", 1)[1] for a in extra if a.startswith("norm=")), "minmax")
    cfg = MedNCAConfig.preset("prostate", **dict(parse_override(a) for a in extra if not a.startswith("norm=")))
    torch.set_num_threads(1)
    data_dir, split_file = TASKS["prostate"]
    train_ids = json.loads(split_file.read_text())["train"]
    data = load_slices([c for c in find_cases(data_dir) if c.case_id in train_ids][:26], cfg)
    if norm == "p99":
        q = torch.quantile(data.images.flatten(1), 0.99, dim=1).view(-1, 1, 1, 1).clamp_min(1e-6)
        data.images = (data.images / q).clamp(0, 1)
    model = build_model(cfg, generator=torch.Generator().manual_seed(0)).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    g = torch.Generator().manual_seed(0)
    order = epoch_order(data, cfg, 0, 0)
    t0, losses = time.time(), []
    for b in range(n_batches):
        idx = order[(b * cfg.batch_size) % (len(order) - cfg.batch_size):][:cfg.batch_size]
        logits, target = model(data.images[idx], data.labels[idx], generator=g)
        loss = dice_bce_loss(logits, target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        for group in opt.param_groups:
            group["lr"] *= cfg.lr_gamma
        losses.append(loss.item())
        if (b + 1) % 10 == 0:
            p, t = logits.detach().sigmoid(), target > 0
            print(json.dumps({"variant": variant, "batch": b + 1, "loss10": round(sum(losses[-10:]) / 10, 4),
                              "p_fg": round(p[t].mean().item(), 3) if t.any() else None,
                              "p_bg": round(p[~t].mean().item(), 3), "fg_frac": round(t.float().mean().item(), 3),
                              "s": round(time.time() - t0)}), flush=True)


if __name__ == "__main__":
    main()
