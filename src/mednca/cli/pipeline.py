"""Commands of the pipeline stages: demo, train, predict, evaluate.

Each command is a pair: ``add_NAME(sub)`` registers its arguments, ``cmd_NAME(args)`` runs it.
Library imports happen inside the commands, so ``mednca --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import MedNCAError
from .. import argtypes
from .common import case_progress, log


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train and test on a built-in synthetic dataset (~1 min)",
                       description="Make a procedural MRI-like dataset, train a small Med-NCA on it "
                                   "and print its test Dice. Needs no data and no internet.")
    p.add_argument("--out", help="keep the dataset and run here (default: a temporary folder)")
    p.add_argument("--seed", type=argtypes.seed, default=0, help="random seed (default 0)")
    p.add_argument("--epochs", type=argtypes.positive_int, default=30, help="training epochs (default 30)")
    p.add_argument("--max-minutes", type=float, help="optional training time budget (default: none)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..pipeline.demo import run_demo

    run_demo(args.out, seed=args.seed, epochs=args.epochs, max_minutes=args.max_minutes, log=log)
    return 0


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a Med-NCA on an MSD or nnU-Net task folder",
                       description="Train Med-NCA on 2D slices of a Medical Segmentation Decathlon "
                                   "(imagesTr/, labelsTr/, dataset.json) or nnU-Net v2 raw folder. "
                                   "Writes config, split, log and checkpoints to the run folder.")
    p.add_argument("--data", required=True, help="task folder with imagesTr/ and labelsTr/")
    p.add_argument("--out", required=True, help="run folder to create (or continue with --resume)")
    p.add_argument("--preset", default="hippocampus", help="named settings (see 'mednca presets'); "
                   "default hippocampus")
    p.add_argument("--config", help="a config.json to start from instead of a preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set steps=32 --set 'betas=[0.9,0.99]' (repeatable)")
    p.add_argument("--split", help="JSON with 'train' and 'test' (and optional 'val') case-id lists; "
                   "default: a seeded 70/10/20 split")
    p.add_argument("--seed", type=argtypes.seed, default=0, help="seed of split, batch order and NCA noise (default 0)")
    p.add_argument("--epochs", type=argtypes.positive_int, help="maximum epochs (overrides the preset)")
    p.add_argument("--max-minutes", type=float, help="stop after this many minutes of training")
    p.add_argument("--channel", type=int, help="modality of 4D/nnU-Net images (e.g. prostate T2 = 0)")
    p.add_argument("--label", type=int, help="keep only this label value as foreground "
                   "(default: all labels > 0 merged, as the paper)")
    p.add_argument("--axis", type=int, choices=(0, 1, 2), help="volume axis to slice along")
    from ..config import MODEL_TYPES  # light: no torch

    p.add_argument("--model", choices=MODEL_TYPES,
                   help="network: mednca (default), unet (the paper's 2D UNet baseline, ~31 M parameters) "
                        "or unet-small (the same UNet at ~31 k parameters, Med-NCA's size); same data, "
                        "split, loss, checkpoints and evaluation")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training over the processes started by torchrun, e.g. "
                        "'torchrun --nproc-per-node 2 -m mednca train --distributed ...' (gloo on CPU, "
                        "NCCL on GPUs; rank 0 writes the run folder)")
    p.set_defaults(func=cmd_train)


def _build_config(args: argparse.Namespace):
    from ..config import MedNCAConfig, parse_override

    overrides = dict(parse_override(item) for item in args.set or [])
    flags = {"channel": args.channel, "label": args.label, "axis": args.axis, "model": args.model}
    overrides.update({name: value for name, value in flags.items() if value is not None})
    if args.config:
        return MedNCAConfig.from_json(args.config).replace(**overrides)
    return MedNCAConfig.preset(args.preset, **overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from ..pipeline.train import train

    if args.resume and (args.set or args.config):
        raise MedNCAError("--resume continues a run with its own config.json; drop --set/--config")
    config = None if args.resume else _build_config(args)
    result = train(args.data, args.out, config, seed=args.seed, split_file=args.split,
                   max_minutes=args.max_minutes, epochs=args.epochs, resume=args.resume,
                   overwrite=args.overwrite, progress=not args.no_progress, log=log,
                   distributed=args.distributed)
    if args.distributed:
        from ..pipeline.distributed import is_main

        if not is_main():  # rank 0 reports for all
            return 0
    log(f"done: {result.epochs_done} epochs, {result.batches_done} batches, best val Dice "
        f"{result.best_val_dice:.4f}, {result.elapsed_s / 60:.1f} min; run folder {result.run_dir}")
    return 0


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="segment a NIfTI file or a folder of them",
                       description="Write binary masks with the input's exact shape, affine and header. "
                                   "With --ensemble K also the mean probability (*_prob / prob/) and the "
                                   "per-voxel standard deviation (*_std / std/).")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or run folder (uses its best checkpoint)")
    p.add_argument("input", metavar="INPUT", help="a .nii/.nii.gz file or a folder (or task folder) of them")
    p.add_argument("-o", "--output", required=True, help="output file (for a file input) or folder")
    p.add_argument("--ensemble", type=argtypes.ensemble, default=1, metavar="K", help="stochastic passes to average (default 1)")
    p.add_argument("--seed", type=argtypes.seed, default=0, help="seed of the NCA's fire masks (default 0)")
    p.add_argument("--channel", type=int, help="modality of 4D images (default: the model's)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="torch (CKPT: checkpoint or run folder) or onnx (CKPT: a .onnx file from "
                        "'mednca export'; needs onnxruntime); default torch")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from ..nn.build import load_model
    from ..pipeline.predict import predict_file, predict_folder

    if args.runtime == "onnx":
        from ..edge.export import OnnxSegmenter

        model = OnnxSegmenter(args.checkpoint)
    elif str(args.checkpoint).endswith(".onnx"):
        raise MedNCAError(f"{args.checkpoint} is an ONNX model; run it with --runtime onnx")
    else:
        model = load_model(args.checkpoint)
    source = Path(args.input)
    if source.is_dir():
        from ..pipeline.distributed import env_rank, env_world_size

        # Launched by torchrun with N processes: each predicts every N-th case.
        written = predict_folder(model, source, args.output, channel=args.channel, ensemble=args.ensemble,
                                 seed=args.seed, overwrite=args.overwrite, progress=case_progress("predict"),
                                 shard=(env_rank(), env_world_size()))
    elif source.is_file():
        written = predict_file(model, source, args.output, channel=args.channel, ensemble=args.ensemble,
                               seed=args.seed, overwrite=args.overwrite)
    else:
        raise MedNCAError(f"input {source} does not exist")
    log(f"wrote {len(written)} file(s) to {args.output}")
    return 0


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="Dice, HD95 and volumes of masks against labels",
                       description="Per-case Dice on hard 3D masks (both empty = 1, one empty = 0), 95%% "
                                   "Hausdorff distance in mm and volumes, with mean ± std, to JSON and CSV. "
                                   "Either compare two folders (--pred, --gt) or predict and score a "
                                   "run's split (RUN --split test).")
    p.add_argument("run", nargs="?", metavar="RUN", help="a run folder to evaluate on one of its splits")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split of RUN (default test)")
    p.add_argument("--data", help="task folder of RUN (default: the one it was trained on)")
    p.add_argument("--pred", help="folder of predicted masks ({case}.nii.gz)")
    p.add_argument("--gt", help="folder of reference labels (or a task folder with labelsTr/)")
    p.add_argument("-o", "--output", help="results JSON, a CSV is written beside it (default for RUN: "
                   "RUN/eval_SPLIT.json; its masks go to RUN/predictions_SPLIT/ either way)")
    p.add_argument("--label", type=int, help="label value to score (default: all labels > 0 merged)")
    p.add_argument("--ensemble", type=argtypes.ensemble, default=1, metavar="K", help="stochastic passes for RUN (default 1)")
    p.add_argument("--seed", type=argtypes.seed, default=0, help="seed of the fire masks for RUN (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing result files")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..pipeline.evaluate import evaluate_folders, evaluate_run

    if args.run:
        if args.pred or args.gt:
            raise MedNCAError("give either a RUN folder or --pred and --gt, not both")
        results, path = evaluate_run(args.run, args.split, data_dir=args.data, ensemble=args.ensemble,
                                     seed=args.seed, overwrite=args.overwrite,
                                     progress=case_progress(f"evaluate {args.split}"), output=args.output)
    else:
        if not (args.pred and args.gt and args.output):
            raise MedNCAError("evaluate needs a RUN folder, or --pred DIR --gt DIR -o results.json")
        results = evaluate_folders(args.pred, args.gt, args.output, label=args.label, overwrite=args.overwrite)
        path = Path(args.output)
    s = results["summary"]
    log(f"{len(results['cases'])} cases: Dice {s['dice']['mean']:.4f} ± {s['dice']['std']:.4f}, "
        f"HD95 {s['hd95_mm']['mean']:.2f} ± {s['hd95_mm']['std']:.2f} mm; written to {path} and "
        f"{path.with_suffix('.csv')}")
    q = results.get("quality")
    if q:
        rho = "n/a" if q["spearman_dice"] is None else f"{q['spearman_dice']:.3f}"
        caught = ("no failures" if q["caught_share"] is None else
                  f"{q['failures_caught']}/{q['n_failures']} failures (Dice < {q['failure_dice']}) caught")
        log(f"quality (K={q['ensemble']}, lower = more confident): mean {s['quality']['mean']:.4g}, "
            f"Spearman vs Dice {rho}; flagging the worst {q['n_flagged']} case(s): {caught}")
    return 0
