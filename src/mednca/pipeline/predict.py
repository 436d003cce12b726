"""Inference: a NIfTI volume in, a binary mask (and optionally probability and uncertainty) out.

Outputs keep the input's exact shape, affine and header geometry. With ``ensemble=K`` the model
runs K stochastic passes (the NCA's fire masks differ per pass); the mean probability and the
per-voxel standard deviation are written too, the latter being the NCA's own uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from ..data.cases import find_cases, nifti_files, strip_nifti
from ..data.slices import image_slices, to_volume
from ..data.volumes import Volume, read_image, reorient, restore_orientation
from ..errors import DataError, OutputExistsError
from ..formats import write_json
from ..fsutil import atomic_path, check_output
from ..config import MedNCAConfig, check_ensemble
from ..nn.unet import UNET_FEATURES
from ..nn.base import SegmentationModel
from .metrics import volume_ml
from .quality import DEFINITION as QUALITY_DEFINITION, ReviewRule, quality_score

#: Per-slice model call: (N, 1, S, S) normalised slices -> (mean, std), two (N, 1, S, S)
#: foreground probability maps (as :meth:`MedNCA.predict_proba`).
Infer = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class SliceRuntime(Protocol):
    """A non-PyTorch runtime of a model (e.g. :class:`mednca.edge.export.OnnxSegmenter`), accepted by
    :func:`predict_file` and :func:`predict_folder` in place of a MedNCA."""

    config: MedNCAConfig

    def infer(self, ensemble: int = 1, seed: int = 0) -> Infer:
        """The per-slice call for ``ensemble`` passes, its randomness seeded by ``seed``."""


@dataclass
class Prediction:
    """A volume's prediction on its original grid.

    Attributes:
        probability: (X, Y, Z) mean foreground probability in [0, 1].
        std: (X, Y, Z) per-voxel standard deviation over the ensemble passes (zeros for K=1).
        largest_component: Whether :attr:`mask` keeps only the largest connected component
            (the model's ``largest_component`` setting).
    """

    probability: np.ndarray
    std: np.ndarray
    largest_component: bool = False

    @property
    def mask(self) -> np.ndarray:
        """(X, Y, Z) uint8 binary mask: probability > 0.5 (only its largest 3D connected
        component with :attr:`largest_component`)."""
        mask = (self.probability > 0.5).astype(np.uint8)
        return largest_component(mask) if self.largest_component else mask


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component (26-connectivity in 3D) of a binary mask, same dtype;
    an empty mask stays empty."""
    from scipy import ndimage

    labels, n = ndimage.label(mask > 0, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return (labels == 1 + int(np.argmax(sizes))).astype(mask.dtype)


#: Memory one batch of slices may take at inference (estimated by :func:`slice_bytes`), in bytes.
MEMORY_BUDGET = 2 << 30


def slice_bytes(config: MedNCAConfig) -> int:
    """Estimated working memory of one ``image_size``² slice at inference, in bytes: a Med-NCA
    holds about 4 states of C channels plus the hidden layer per cell, a UNet about 8 maps of its
    first level's width per pixel."""
    per_pixel = 8 * UNET_FEATURES[config.model][0] if config.model in UNET_FEATURES else 4 * config.channels + config.hidden
    return 4 * config.image_size ** 2 * per_pixel


def batch_slices(config: MedNCAConfig, batch_size: int = 64) -> int:
    """Slices per forward pass: at most ``batch_size``, and as many as fit :data:`MEMORY_BUDGET`."""
    return max(1, min(batch_size, MEMORY_BUDGET // slice_bytes(config)))


@torch.no_grad()
def predict_volume(model: SegmentationModel, volume: np.ndarray, ensemble: int = 1,
                   generator: torch.Generator | None = None, batch_size: int = 64) -> Prediction:
    """Segment a 3D image slice by slice along the model's configured axis.

    Args:
        model: A trained MedNCA (or UNet baseline, see :mod:`mednca.nn.unet`).
        volume: (X, Y, Z) image array (any intensity range; slices are normalised like in training).
        ensemble: Stochastic passes K to average.
        generator: Source of the fire masks (seed it for reproducible outputs).
        batch_size: Slices per forward pass at most (fewer when they would not fit
            :data:`MEMORY_BUDGET`).
    """
    check_ensemble(ensemble)
    model.eval()
    return predict_slices(lambda x: model.predict_proba(x, ensemble, generator), volume, model.config,
                          batch_size)


@torch.no_grad()
def predict_slices(infer: Infer, volume: np.ndarray, config: MedNCAConfig,
                   batch_size: int = 64) -> Prediction:
    """Segment a 3D image slice by slice with any per-slice model call (see :data:`Infer`).

    Args:
        infer: (N, 1, S, S) normalised slices -> (mean, std) probabilities, each (N, 1, S, S).
        volume: (X, Y, Z) image array.
        config: The model's config (axis, image_size, interpolation).
        batch_size: Slices per call.
    """
    if volume.ndim != 3:
        raise DataError(f"expected a 3D volume, got shape {volume.shape}")
    cfg = config
    batch_size = batch_slices(cfg, batch_size)
    slices = image_slices(volume, cfg.axis, cfg.image_size, cfg.interpolation, cfg.normalization)  # (N, 1, S, S)
    means, stds = [], []
    for s in range(0, slices.shape[0], batch_size):
        mean, std = infer(slices[s:s + batch_size])
        means.append(mean)
        stds.append(std)
    prob = to_volume(torch.cat(means), volume.shape, cfg.axis).clip(0.0, 1.0)
    std = to_volume(torch.cat(stds), volume.shape, cfg.axis).clip(0.0, None)
    return Prediction(prob.astype(np.float32), std.astype(np.float32), cfg.largest_component)


def write_like(data: np.ndarray, reference: Volume, path: str | Path) -> Path:
    """Write ``data`` as NIfTI with the reference volume's affine and header geometry (atomically)."""
    import nibabel as nib

    header = reference.header.copy()
    header.set_data_dtype(data.dtype)
    if len(header.get_data_shape()) != data.ndim:  # a 4D input with a selected channel
        header.set_data_shape(data.shape)
    image = nib.Nifti1Image(data, reference.affine, header)
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_path(path) as tmp:
        target = tmp.with_name(tmp.name + suffix)  # nibabel picks compression by extension
        try:
            nib.save(image, str(target))
            target.replace(tmp)
        finally:
            target.unlink(missing_ok=True)
    return path


def predict_oriented(model: SegmentationModel | SliceRuntime, data: np.ndarray, affine: np.ndarray,
                     ensemble: int = 1, seed: int = 0) -> Prediction:
    """One (X, Y, Z) volume on the grid of ``affine`` with a MedNCA (fire masks from a generator
    seeded ``seed``) or a runtime: reoriented to the model's ``orientation`` first (no
    resampling), the prediction turned back to the volume's own grid."""
    check_ensemble(ensemble)
    codes = model.config.orientation
    data = reorient(data, affine, codes)
    if isinstance(model, torch.nn.Module):  # MedNCA or UNetBaseline
        pred = predict_volume(model, data, ensemble, torch.Generator().manual_seed(seed))
    else:
        pred = predict_slices(model.infer(ensemble, seed), data, model.config)
    if codes is not None:
        pred.probability = restore_orientation(pred.probability, affine, codes)
        pred.std = restore_orientation(pred.std, affine, codes)
    return pred


def _sidecar(path: Path, tag: str) -> Path:
    stem = strip_nifti(path.name) or path.stem
    suffix = path.name[len(stem):] or ".nii.gz"
    return path.with_name(f"{stem}_{tag}{suffix}")


def predict_case(model: SegmentationModel | SliceRuntime, image: str | Path, channel: int | None,
                 targets: list[Path], ensemble: int = 1, seed: int = 0,
                 review: ReviewRule | None = None) -> tuple[Prediction, dict | None]:
    """Predict one image file and write the mask to ``targets[0]`` (and, when ``ensemble > 1``,
    the mean probability and the standard deviation to ``targets[1]`` and ``targets[2]``).

    With ``review`` also the result's report (:func:`result_report`) to the last target, a
    ``.json`` file. Returns (the prediction, the report or None).
    """
    volume = read_image(image, channel)
    pred = predict_oriented(model, volume.data, volume.affine, ensemble, seed)
    mask = pred.mask
    write_like(mask, volume, targets[0])
    if ensemble > 1:
        write_like(pred.probability, volume, targets[1])
        write_like(pred.std, volume, targets[2])
    if review is None:
        return pred, None
    report = {"input": str(image), "mask": str(targets[0]), **result_report(pred, mask, volume, review, ensemble, seed)}
    write_json(targets[-1], report)
    return pred, report


def result_report(pred: Prediction, mask: np.ndarray, volume: Volume, review: ReviewRule | None, ensemble: int,
                  seed: int) -> dict:
    """What a user needs to judge one result: the mask's volume (mL), the quality score of the
    ``ensemble`` passes and whether the result needs a second look (see :class:`ReviewRule`;
    ``review`` None: no calibrated threshold, ``"review": None``)."""
    quality = quality_score(pred.probability, pred.std) if ensemble > 1 else float("nan")
    if review is None:
        flagged, reason = None, "this model has no calibrated review threshold"
    else:
        flagged, reason = review.assess(quality, int(mask.sum()))
    return {"volume_ml": round(volume_ml(mask, volume.spacing), 4), "quality": quality, "ensemble": ensemble,
            "seed": seed, "review": flagged, "reason": reason,
            "review_threshold": None if review is None else review.threshold, "quality_definition": QUALITY_DEFINITION}


def report_line(name: str, report: dict) -> str:
    """One line for a user about a result: ``case: 3.21 mL, quality 0.0412 - looks fine``."""
    verdict = f"please review ({report['reason']})" if report["review"] else "looks fine"
    return f"{name}: {report['volume_ml']:.2f} mL, quality {report['quality']:.4g} - {verdict}"


def predict_file(model: SegmentationModel | SliceRuntime, image: str | Path, output: str | Path, *, channel: int | None = None,
                 ensemble: int = 1, seed: int = 0, overwrite: bool = False, review: ReviewRule | None = None,
                 log: Callable[[str], None] | None = None) -> list[Path]:
    """Predict one NIfTI file; write the mask to ``output`` (and ``*_prob``/``*_std`` beside it
    when ``ensemble > 1``; with ``review`` the result's report as ``*.json`` beside it, and
    :func:`report_line` to ``log``). Returns the written paths."""
    output = Path(output)
    if strip_nifti(output.name) is None:
        raise DataError(f"output {output} must end in .nii.gz or .nii")
    if output.exists() and output.resolve() == Path(image).resolve():
        raise OutputExistsError(f"{output} is the input scan; write the mask to another file")
    targets = [output] + ([_sidecar(output, "prob"), _sidecar(output, "std")] if ensemble > 1 else [])
    if review is not None:
        targets.append(output.with_name(f"{strip_nifti(output.name)}.json"))
    for t in targets:
        check_output(t, overwrite)
    _, report = predict_case(model, image, model.config.channel if channel is None else channel, targets,
                             ensemble, seed, review)
    if report is not None and log is not None:
        log(report_line(Path(image).name, report))
    return targets


def predict_folder(model: SegmentationModel | SliceRuntime, folder: str | Path, out_dir: str | Path, *, channel: int | None = None,
                   ensemble: int = 1, seed: int = 0, overwrite: bool = False,
                   progress: Callable[[int, int, str], None] | None = None,
                   shard: tuple[int, int] = (0, 1), log: Callable[[str], None] | None = None,
                   channel_files: str = "auto", review: ReviewRule | None = None) -> list[Path]:
    """Predict every case of a folder of images (or of an MSD/nnU-Net task's ``imagesTr``).

    Masks go to ``out_dir/{case}.nii.gz``; with ``ensemble > 1`` the mean probability goes to
    ``out_dir/prob/`` and the standard deviation to ``out_dir/std/`` under the same name; with
    ``review`` each case's report to ``out_dir/{case}.json`` and a line per case to ``log``.
    Existing outputs are refused (before anything is computed) unless ``overwrite``; an output
    that would replace an input scan is always refused. A case that cannot be read is reported
    (``log``) and skipped, and the others are predicted; then :class:`DataError` names them.

    Args:
        shard: ``(rank, world_size)``: predict only every world_size-th case starting at rank
            (how processes launched together split a large folder).
        log: Where a line per failed case goes (and how ``_XXXX`` file names were read).
        channel_files: How files named ``{case}_{XXXX}`` are read (see
            :func:`mednca.data.cases.find_cases`): by default grouped as one case's channels only
            when the folder declares nnU-Net channel files, so no scan is dropped.

    Raises:
        DataError: Some cases could not be predicted (all the others were written).
    """
    folder, out_dir = Path(folder), Path(out_dir)
    ch = model.config.channel if channel is None else channel
    rank, world = shard
    cases = find_cases(folder, ch, labels=None, channel_files=channel_files, log=log)[rank::world]  # imagesTr/ if there is one, else the folder
    image_dir = folder / "imagesTr" if (folder / "imagesTr").is_dir() else folder
    inputs = {p.resolve() for p in nifti_files(image_dir).values()}
    plans = []
    for case in cases:
        mask_path = out_dir / f"{case.case_id}.nii.gz"
        targets = [mask_path]
        if ensemble > 1:
            targets += [out_dir / "prob" / mask_path.name, out_dir / "std" / mask_path.name]
        if review is not None:
            targets.append(out_dir / f"{case.case_id}.json")
        for t in targets:
            if t.resolve() in inputs:
                raise OutputExistsError(f"{t} is an input scan; write the masks to another folder")
            check_output(t, overwrite)
        plans.append((case, targets))
    written: list[Path] = []
    failed: list[str] = []
    for i, (case, targets) in enumerate(plans):
        try:
            _, report = predict_case(model, case.image, case.channel, targets, ensemble, seed, review)
            written += targets
            if report is not None and log is not None:
                log(report_line(case.case_id, report))
        except DataError as exc:  # a bad scan: say so, go on with the others
            failed.append(case.case_id)
            if log:
                log(f"case {case.case_id} failed: {exc}")
        if progress:
            progress(i + 1, len(plans), case.case_id)
    if failed:
        shown = ", ".join(failed[:5]) + (" ..." if len(failed) > 5 else "")
        raise DataError(f"{len(failed)} of {len(plans)} case(s) could not be predicted ({shown}); "
                        f"the other {len(plans) - len(failed)} were written to {out_dir}")
    return written
