"""The prostate recipe learns: a short training of the ``prostate`` preset on a few real PROMISE12
slices (../shared/data, read in place) must predict foreground where the labels have it.

Fails when the recipe collapses to "background everywhere" again (what every prostate model in
mednca did before the recipe changed: test Dice 0.000 after 30 minutes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mednca import build_model
from mednca.config import MedNCAConfig
from mednca.data.cases import find_cases
from mednca.data.slices import load_slices
from mednca.pipeline.augment import augment_batch
from mednca.pipeline.batches import lr_at
from mednca.pipeline.ema import WeightAverage
from mednca.pipeline.losses import dice_bce_loss

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
TASK = SHARED / "PROMISE12"
SPLIT = SHARED / "splits" / "PROMISE12_70_30.json"
#: Training cases, optimizer steps and the Dice the slices must reach: measured 0.406 with the
#: preset's augmentation (zooms of ±40 %, the gland's contrast within exp(±0.5)) and averaged
#: weights (~50 s on 2 AMD EPYC Zen 5 cores; 0.413 without the contrast change, 0.415 with zooms
#: of ±15 %, 0.449 with the earlier 24 steps at level 2); a recipe that collapses to background
#: scores 0.
CASES, STEPS, MIN_DICE = 2, 200, 0.3

pytestmark = pytest.mark.skipif(not TASK.is_dir(), reason="needs ../shared/data/PROMISE12")


def test_the_prostate_preset_learns_a_few_real_slices():
    torch.manual_seed(0)
    config = MedNCAConfig.preset("prostate")
    ids = json.loads(SPLIT.read_text())["train"][:CASES]
    cases = [c for c in find_cases(TASK, config.channel) if c.case_id in ids]
    data = load_slices(cases, config)
    fg = data.foreground().nonzero().squeeze(1)
    images, labels = data.images[fg], data.labels[fg]  # the slices that show the prostate
    g = torch.Generator().manual_seed(0)
    model = build_model(config, generator=torch.Generator().manual_seed(0)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    average = WeightAverage(model, config.ema)
    for step in range(STEPS):
        idx = torch.randint(0, len(fg), (config.batch_size,), generator=g)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, step)
        logits, target = model(*augment_batch(images[idx], labels[idx], config.augment, g,
                                                 max_scale=config.augment_scale,
                                                 max_log_gamma=config.augment_gamma,
                                                 max_log_contrast=config.augment_contrast), generator=g)
        loss = dice_bce_loss(logits, target)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        average.update(step)
    with average.applied():  # the weights a run validates and saves
        mean, _ = model.eval().predict_proba(images, 1, torch.Generator().manual_seed(1))
    pred, truth = mean > 0.5, labels > 0.5
    dice = float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
    assert pred.any(), "the prostate recipe collapsed: no foreground predicted on its own training slices"
    assert dice >= MIN_DICE, f"Dice {dice:.3f} on {len(fg)} training slices after {STEPS} steps"
