"""Commands about models and data: export, info, presets, download.

Each command is a pair: ``add_NAME(sub)`` registers its arguments, ``cmd_NAME(args)`` runs it.
Library imports happen inside the commands, so ``mednca --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from .common import log


def add_export(sub) -> None:
    p = sub.add_parser("export", help="write a self-contained ONNX or TorchScript model",
                       description="Export a model for edge inference: one file mapping (B, 1, H, W) "
                                   "min-max normalised slices to logits, fire masks drawn inside the "
                                   "graph. Runs with only onnxruntime (or torch for TorchScript).")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or run folder (uses its best checkpoint)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="default onnx")
    p.add_argument("-o", "--output", help="output file (default: the checkpoint's name with .onnx/.pt beside it)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--noise-input", action="store_true",
                   help="take the fire-mask noise as inputs noise1, noise2 instead of drawing it in the graph")
    p.add_argument("--weights", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="ONNX only: store the weights as fp16 or as int8 with one scale per output channel "
                        "(smaller file, float32 compute; see benchmarks/RESULTS.md for the Dice it costs); "
                        "default fp32")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..nn.build import load_model
    from ..edge.export import default_output, export_model

    model = load_model(args.checkpoint)
    output = args.output or default_output(args.checkpoint, args.format)
    path = export_model(model, output, args.format, opset=args.opset, explicit_noise=args.noise_input,
                        overwrite=args.overwrite, weights=args.weights)
    log(f"wrote {args.format} model {path} ({path.stat().st_size:,} bytes, {args.weights} weights)")
    return 0


def add_info(sub) -> None:
    p = sub.add_parser("info", help="show a checkpoint's version, size and config")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or run folder")
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from ..checkpoint import read_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(args.checkpoint)
    meta, tensors = read_checkpoint(path)
    n = sum(t.numel() for k, t in tensors.items()  # batch-norm statistics (UNets) are not parameters
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    log(f"checkpoint {path}\n  mednca {meta.get('mednca_version')}, format {meta.get('format')}, "
        f"{n:,} parameters" + (f", epoch {meta['epoch']}" if "epoch" in meta else "")
        + (f", val Dice {float(meta['val_dice']):.4f}" if "val_dice" in meta else ""))
    log(json.dumps(json.loads(meta["config"]), indent=2))
    return 0


def add_presets(sub) -> None:
    p = sub.add_parser("presets", help="list the named presets, or print one as JSON")
    p.add_argument("name", nargs="?", help="a preset to print in full")
    p.set_defaults(func=cmd_presets)


def cmd_presets(args: argparse.Namespace) -> int:
    from ..config import MedNCAConfig, PRESETS

    import json

    if args.name:
        log(json.dumps(MedNCAConfig.preset(args.name).to_dict(), indent=2))
    else:
        for name in PRESETS:
            c = MedNCAConfig.preset(name)
            log(f"{name:18s} {c.channels} channels, {c.steps} steps/level, {c.image_size}² slices, "
                f"{c.patch_size}² patches, batch {c.batch_size}, lr {c.lr:g}")
    return 0


def add_download(sub) -> None:
    p = sub.add_parser("download", help="fetch and unpack a Medical Segmentation Decathlon task",
                       description="Download an MSD task archive (needs internet), verify its MD5, resume "
                                   "an interrupted download and unpack it. --url takes a local archive too.")
    p.add_argument("task", metavar="TASK", help="e.g. Task04_Hippocampus")
    p.add_argument("--dest", default=".", help="folder to put the task folder in (default: current)")
    p.add_argument("--url", help="archive URL or local path instead of the official mirror")
    p.add_argument("--md5", help="expected MD5 of the archive (default: the official one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing task folder")
    p.set_defaults(func=cmd_download)


def cmd_download(args: argparse.Namespace) -> int:
    from ..data.download import download_task

    state: dict = {}

    def progress(done: int, total: int | None) -> None:
        if "bar" not in state:
            from tqdm import tqdm

            state["bar"] = tqdm(total=total, unit="B", unit_scale=True, desc=args.task,
                                disable=not sys.stderr.isatty())
        state["bar"].update(done - state["bar"].n)

    try:
        folder = download_task(args.task, args.dest, url=args.url, md5=args.md5, overwrite=args.overwrite,
                               progress=progress)
    finally:
        if "bar" in state:
            state["bar"].close()
    log(f"{args.task} is ready in {folder}")
    return 0
