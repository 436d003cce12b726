"""The models a ``mednca serve`` app offers: every shipped model plus checkpoints given on the
command line, loaded once at start-up, each with the number of passes and review rule it runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import MedNCAError
from ..nn.base import SegmentationModel
from ..nn.build import load_model
from ..nn.shipped import is_shipped, model_card, shipped_names
from ..pipeline.predict_dicom import model_identity
from ..pipeline.quality import ReviewRule

#: Stochastic passes for a checkpoint without a model card (enough for an uncertainty map).
DEFAULT_ENSEMBLE = 8


@dataclass
class ServedModel:
    """A loaded model and how the app runs it.

    Attributes:
        name: The name the page shows and the API takes (a shipped name or the checkpoint's name).
        model: The network (eval mode).
        ensemble: Stochastic passes per scan.
        review: The review rule (shipped models), or None (no calibrated threshold).
        structure: What it segments (``"hippocampus"``), for the DICOM SEG; None if unknown.
        version: First 12 hex digits of the weights' sha256.
        description: One line for the page (task, modality, test Dice).
    """

    name: str
    model: SegmentationModel
    ensemble: int
    review: ReviewRule | None
    structure: str | None
    version: str
    description: str

    def summary(self) -> dict:
        """What ``GET /api/models`` says about the model."""
        return {"name": self.name, "description": self.description, "ensemble": self.ensemble,
                "review_threshold": None if self.review is None else self.review.threshold,
                "structure": self.structure}


def _shipped(name: str) -> ServedModel:
    card = model_card(name)
    review = card["review"]
    test = card["test"]
    description = (f"{card['task']}; {card['modality']}; test Dice {test['dice_mean']:.3f} on "
                   f"{test['cases']} cases")
    return ServedModel(name, load_model(name), int(review["ensemble"]),
                       ReviewRule(float(review["threshold"]), int(review["ensemble"])), card["structure"],
                       card["sha256"][:12], description)


def _checkpoint(spec: str) -> ServedModel:
    path = Path(spec)
    model = load_model(path)
    name, version, structure = model_identity(path, model)
    return ServedModel(name, model, DEFAULT_ENSEMBLE, None, structure, version,
                       f"checkpoint {path} (config {model.config.name}); no review threshold")


def load_served(specs: list[str] | None = None) -> dict[str, ServedModel]:
    """The models to serve, by name: every shipped model, then ``specs`` (more shipped names,
    checkpoint files or run folders).

    Raises:
        MedNCAError: A spec is neither a shipped model nor a readable checkpoint, or two share a name.
    """
    served: dict[str, ServedModel] = {}
    for spec in dict.fromkeys([*shipped_names(), *(specs or [])]):
        model = _shipped(spec) if not Path(spec).exists() and is_shipped(spec) else _checkpoint(spec)
        if model.name in served:
            raise MedNCAError(f"two models are named {model.name!r}; rename one of the checkpoints")
        served[model.name] = model
    if not served:
        raise MedNCAError("no model to serve: give --model NAME or a checkpoint")
    return served
