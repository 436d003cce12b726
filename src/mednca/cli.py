"""The ``mednca`` command: one subcommand per pipeline stage, each a thin wrapper over the library.

Every command is a pair beside each other: ``add_NAME(sub)`` registers its arguments and
``cmd_NAME(args)`` runs it, grouped below as pipeline stages, models and data, experiments.
Library imports happen inside the commands, so ``mednca --help`` is instant. User-fixable
problems print one line ``mednca: error: ...`` and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import argtypes
from .config import MODEL_TYPES, PRESETS, MedNCAConfig, parse_override
from .data.cases import CHANNEL_FILES
from .errors import MedNCAError
from .formats import one_line
from .fsutil import WRITE_ERRNOS
from .experiments.bench.args import add_bench_arguments
from .runtime import tune_for_networks
from .version import __version__

EPILOG = "Run 'mednca COMMAND --help' for a command's options. Docs: README.md and docs/cli.md."


def log(text: str) -> None:
    """A status line on standard output."""
    print(text, flush=True)


def warn(text: str) -> None:
    """A warning line on standard error."""
    print(f"mednca: {text}", file=sys.stderr, flush=True)


def case_progress(desc: str) -> Callable[[int, int, str], None]:
    """A callback ``progress(done, total, case_id)`` that drives a tqdm bar (on a terminal)."""
    state: dict = {}

    def update(done: int, total: int, case_id: str) -> None:
        if "bar" not in state:
            from tqdm import tqdm

            state["bar"] = tqdm(total=total, desc=desc, unit="case", disable=not sys.stderr.isatty(), leave=False)
        state["bar"].update(1)
        state["bar"].set_postfix_str(case_id)
        if done == total:
            state["bar"].close()

    return update


# -- pipeline stages: demo, train, predict, evaluate ----------------------------------------------
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
    from .pipeline.demo import run_demo

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
    overrides = dict(parse_override(item) for item in args.set or [])
    flags = {"channel": args.channel, "label": args.label, "axis": args.axis, "model": args.model}
    overrides.update({name: value for name, value in flags.items() if value is not None})
    if args.config:
        return MedNCAConfig.from_json(args.config).replace(**overrides)
    return MedNCAConfig.preset(args.preset, **overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from .pipeline.train import train

    if args.resume and (args.set or args.config):
        raise MedNCAError("--resume continues a run with its own config.json; drop --set/--config")
    config = None if args.resume else _build_config(args)
    result = train(args.data, args.out, config, seed=args.seed, split_file=args.split,
                   max_minutes=args.max_minutes, epochs=args.epochs, resume=args.resume,
                   overwrite=args.overwrite, progress=not args.no_progress, log=log,
                   distributed=args.distributed)
    if args.distributed:
        from .pipeline.distributed import is_main

        if not is_main():  # rank 0 reports for all
            return 0
    log(f"done: {result.epochs_done} epochs, {result.batches_done} batches, best val Dice "
        f"{result.best_val_dice:.4f}, {result.elapsed_s / 60:.1f} min; run folder {result.run_dir}")
    return 0


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="segment a NIfTI file, a folder of them or a DICOM series",
                       usage="mednca predict [options] (CKPT | --model NAME) INPUT -o OUTPUT",
                       description="Write binary masks with the input's exact shape, affine and header. "
                                   "With --ensemble K also the mean probability (*_prob / prob/) and the "
                                   "per-voxel standard deviation (*_std / std/). With a shipped model "
                                   "(--model NAME, see 'mednca models') also a report per case (*.json: "
                                   "volume in mL, quality score, review true/false) and one line per case.")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or run folder (uses its best checkpoint); "
                   "leave it out with --model")
    p.add_argument("input", metavar="INPUT", nargs="?", help="a .nii/.nii.gz file or a folder (or task folder) of them; "
                   "or one DICOM series: its folder, a .zip of it (needs mednca[dicom])")
    p.add_argument("--model", metavar="NAME", help="a model shipped in mednca (e.g. hippocampus; 'mednca models' "
                   "lists them) instead of CKPT")
    p.add_argument("-o", "--output", required=True, help="output file (for a file input) or folder; for DICOM "
                   "input result.dcm (a DICOM SEG over the source images) or mask.nii.gz")
    p.add_argument("--series", metavar="UID", help="with DICOM input holding several series: the "
                   "SeriesInstanceUID to segment (the error lists them)")
    p.add_argument("--ensemble", type=argtypes.ensemble, metavar="K",
                   help="stochastic passes to average (default 1; a shipped model: its card's number)")
    p.add_argument("--seed", type=argtypes.seed, default=0, help="seed of the NCA's fire masks (default 0)")
    p.add_argument("--channel", type=int, help="modality of 4D images (default: the model's)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--channel-files", choices=CHANNEL_FILES, default="auto",
                   help="a folder whose file names end in _XXXX: auto (default) reads them as one case's nnU-Net "
                        "channel files only when a dataset.json here or one folder up declares channel_names, "
                        "else each file as a scan; group or separate decide")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="torch (CKPT: checkpoint or run folder) or onnx (CKPT: a .onnx file from "
                        "'mednca export'; needs onnxruntime); default torch")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from .data.dicom import is_dicom_input
    from .nn.build import load_model
    from .pipeline.predict import predict_file, predict_folder

    review = None
    if args.model is not None:
        if args.input is not None:
            raise MedNCAError(f"give either a checkpoint ({args.checkpoint}) or --model {args.model}, not both")
        args.checkpoint, args.input = args.model, args.checkpoint
        review = _shipped_review(args)
    elif args.input is None:
        raise MedNCAError("give a checkpoint and an input (mednca predict CKPT INPUT -o OUT), "
                          "or a shipped model (mednca predict --model NAME INPUT -o OUT)")
    args.ensemble = args.ensemble or (review.ensemble if review else 1)
    if args.runtime == "onnx":
        from .edge.export import OnnxSegmenter

        model = OnnxSegmenter(args.checkpoint)
    elif str(args.checkpoint).endswith(".onnx"):
        raise MedNCAError(f"{args.checkpoint} is an ONNX model; run it with --runtime onnx")
    else:
        model = load_model(args.checkpoint)
    source = Path(args.input)
    if is_dicom_input(source):
        written = _predict_dicom(args, model, source, review)
    elif args.series:
        raise MedNCAError(f"--series picks a DICOM series, but {source} is not DICOM input")
    elif source.is_dir():
        from .pipeline.distributed import env_rank, env_world_size

        # Launched by torchrun with N processes: each predicts every N-th case.
        written = predict_folder(model, source, args.output, channel=args.channel, ensemble=args.ensemble,
                                 seed=args.seed, overwrite=args.overwrite, progress=case_progress("predict"),
                                 shard=(env_rank(), env_world_size()), log=warn, channel_files=args.channel_files,
                                 review=review)
    elif source.is_file():
        written = predict_file(model, source, args.output, channel=args.channel, ensemble=args.ensemble,
                               seed=args.seed, overwrite=args.overwrite, review=review, log=log)
    else:
        raise MedNCAError(f"input {source} does not exist")
    log(f"wrote {len(written)} file(s) to {args.output}")
    return 0


def _shipped_review(args: argparse.Namespace):
    """The review rule of the shipped model ``args.model`` with ``--ensemble`` (or its card's
    number of passes); None for a checkpoint path or a single pass."""
    from .nn.shipped import is_shipped, model_card
    from .pipeline.quality import ReviewRule

    if args.runtime != "torch" or Path(args.model).exists() or not is_shipped(args.model):
        return None
    card = model_card(args.model)["review"]
    ensemble = args.ensemble or card["ensemble"]
    if ensemble < 2:
        warn("--ensemble 1 gives no quality score: no review flag for these results")
        return None
    return ReviewRule(float(card["threshold"]), ensemble)


def _predict_dicom(args: argparse.Namespace, model, source: Path, review) -> list[Path]:
    """Segment the DICOM series ``source`` with predict's arguments; the SEG names the model."""
    from .pipeline.predict_dicom import model_identity, predict_dicom

    name, version, structure = model_identity(args.checkpoint, model)
    return predict_dicom(model, source, args.output, series=args.series, ensemble=args.ensemble, seed=args.seed,
                         overwrite=args.overwrite, review=review, model_name=name, model_version=version,
                         structure=structure, log=log)


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
    from .pipeline.evaluate import evaluate_folders, evaluate_run

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


# -- models and data: export, info, presets, download ---------------------------------------------
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
    from .nn.build import load_model
    from .edge.export import default_output, export_model

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
    from .checkpoint import parse_config, read_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(args.checkpoint)
    meta, tensors = read_checkpoint(path)
    config = parse_config(meta.get("config"), path)  # an invalid config is an error, not a listing
    n = sum(t.numel() for k, t in tensors.items()  # batch-norm statistics (UNets) are not parameters
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    log(f"checkpoint {path}\n  mednca {meta.get('mednca_version')}, format {meta.get('format')}, "
        f"{n:,} parameters" + (f", epoch {meta['epoch']}" if "epoch" in meta else "")
        + (f", val Dice {_number(meta['val_dice'])}" if "val_dice" in meta else ""))
    log(json.dumps(config.to_dict(), indent=2))
    return 0


def _number(text: str) -> str:
    """A header value shown with 4 decimals if it is a number, as it is otherwise."""
    try:
        return f"{float(text):.4f}"
    except ValueError:
        return text


def add_presets(sub) -> None:
    p = sub.add_parser("presets", help="list the named presets, or print one as JSON")
    p.add_argument("name", nargs="?", help="a preset to print in full")
    p.set_defaults(func=cmd_presets)


def cmd_presets(args: argparse.Namespace) -> int:
    if args.name:
        log(json.dumps(MedNCAConfig.preset(args.name).to_dict(), indent=2))
    else:
        for name in PRESETS:
            c = MedNCAConfig.preset(name)
            log(f"{name:18s} {c.channels} channels, {c.steps} steps/level, {c.image_size}² slices, "
                f"{c.patch_size}² patches, batch {c.batch_size}, lr {c.lr:g}")
    return 0


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="a local web app: drop a scan, segment it, view and download the mask",
                       description="Start mednca's web app on this machine (needs mednca[web]): a page to upload "
                                   "a NIfTI scan or a .zip of one DICOM series, pick a model, segment it on the "
                                   "CPU and view the mask and uncertainty over the scan, with the volume, quality "
                                   "score and review flag; the mask, DICOM SEG and report can be downloaded. "
                                   "Everything the page needs is served from the package (no internet). "
                                   "The HTTP API is in docs/web.md.")
    p.add_argument("--model", action="append", default=[], metavar="NAME|CKPT",
                   help="a model to offer besides the shipped ones: a checkpoint or run folder (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=argtypes.port, default=8000, help="port (default 8000)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.add_argument("--max-upload-mb", type=argtypes.positive_float, default=512,
                   help="largest upload accepted, in MB (default 512)")
    p.add_argument("--max-voxels", type=argtypes.positive_int,
                   help="largest scan segmented, in voxels (default 512³ = 134,217,728); a larger one "
                        "fails with a message before it is read")
    p.add_argument("--keep-minutes", type=argtypes.positive_float, default=60,
                   help="how long a result's files are kept after it is done (default 60)")
    p.add_argument("--seed", type=argtypes.seed, default=0, help="seed of the NCA's fire masks (default 0)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .web.app import create_app
    except ImportError as exc:
        raise MedNCAError(f'mednca serve needs the web extra: pip install "mednca[web]" ({exc})') from exc
    from .web.app import LOCAL_HOSTS, SERVE_MAX_VOXELS
    from .web.models import load_served

    models = load_served(args.model)
    hosts = None if args.host in ("0.0.0.0", "::") else tuple(dict.fromkeys([*LOCAL_HOSTS, args.host]))
    app = create_app(models, max_upload_mb=args.max_upload_mb, keep_minutes=args.keep_minutes, seed=args.seed,
                     hosts=hosts, max_voxels=args.max_voxels or SERVE_MAX_VOXELS)
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else host}:{args.port}/"
    log(f"mednca serve: {len(models)} model(s) ({', '.join(models)}); open {url} (Ctrl+C stops it and "
        "deletes every uploaded and produced file)")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        warn(f"listening on {args.host}: other machines on the network can reach this app")
    if args.open:
        import threading
        import webbrowser

        threading.Timer(1.5, webbrowser.open, (url,)).start()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def add_models(sub) -> None:
    p = sub.add_parser("models", help="list the trained models shipped in mednca, or print one's model card",
                       description="The models inside the package need no download and no training: "
                                   "'mednca predict --model NAME INPUT -o OUT'. Without NAME: one line per "
                                   "model; with NAME: its model card (intended use, input, training data, "
                                   "test results, review threshold, licence).")
    p.add_argument("name", nargs="?", metavar="NAME", help="a model to describe")
    p.add_argument("--json", action="store_true", help="print the card as JSON")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from .nn.shipped import model_card, shipped_names

    if args.name:
        card = model_card(args.name)
        log(json.dumps(card, indent=2) if args.json else format_card(card))
        return 0
    names = shipped_names()
    if not names:
        log("no models are shipped in this installation")
    for name in names:
        card = model_card(name)
        test = card["test"]
        log(f"{name:14s} {card['modality']}; {card['parameters']:,} parameters; test Dice "
            f"{test['dice_mean']:.3f} ± {test['dice_std']:.3f} ({test['cases']} cases); licence {card['licence'].split(' (')[0]}")
    return 0


def format_card(card: dict) -> str:
    """A model card as text for a terminal."""
    test, review, training = card["test"], card["review"], card["training"]
    caught = review["test"]
    lines = [f"{card['name']}: {card['task']}", "",
             f"Intended use: {card['intended_use']}", f"Modality: {card['modality']}", f"Input: {card['input']}",
             f"Parameters: {card['parameters']:,}   mednca {card['mednca_version']}   sha256 {card['sha256'][:16]}...",
             f"Training data: {training['data']}", f"Trained with: {training['command']}",
             f"Test ({test['cases']} held-out cases, {test['ensemble']} passes): Dice {test['dice_mean']:.3f} ± "
             f"{test['dice_std']:.3f}, HD95 {test['hd95_mm_mean']:.2f} mm",
             f"Review flag: {review['rule']}; threshold {review['threshold']:.4g} ({review['calibration']}). "
             f"On the test cases it flagged {caught['failures_flagged']} of {caught['n_failures']} failures "
             f"(Dice < {caught['failure_dice']}) and {caught['good_flagged']} of {caught['n_good']} good results.",
             f"Licence: {card['licence']}", f"Attribution: {card['attribution']}"]
    return "\n".join(lines)


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
    from .data.download import download_task

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


# -- experiments: compare, robustness, report, bench ----------------------------------------------
def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="compare run folders: size, test Dice/HD95, CPU speed, memory",
                       description="One table row per run: model type, parameters, checkpoint size, test Dice "
                                   "mean ± std and HD95 from RUN/eval_test.json, CPU inference time per slice "
                                   "and per volume (median of repeats) and peak memory of inference (in a "
                                   "fresh process per run). Printed as Markdown; -o also writes it with a "
                                   "JSON file beside it.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (e.g. a Med-NCA and a UNet run)")
    p.add_argument("-o", "--output", help="Markdown file to write (a .json with the rows is written beside it)")
    p.add_argument("--evaluate", action="store_true",
                   help="run 'mednca evaluate RUN' (test split) for runs without eval_test.json")
    p.add_argument("--repeats", type=argtypes.positive_int, default=5, help="timed repeats, median reported (default 5)")
    p.add_argument("--threads", type=argtypes.positive_int, help="torch threads for the timings (default: torch's)")
    p.add_argument("--in-process", action="store_true",
                   help="measure in this process (faster; no memory figures)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from .experiments.compare import comparison_json_path, compare_runs, markdown_table, write_comparison
    from .fsutil import check_output

    if args.output:  # refuse existing outputs before measuring anything
        for path in (args.output, comparison_json_path(args.output)):
            check_output(path, args.overwrite)
    rows = compare_runs(args.runs, evaluate=args.evaluate, repeats=args.repeats, threads=args.threads,
                        isolate=not args.in_process, log=lambda text: print(text, file=sys.stderr, flush=True))
    table = markdown_table(rows)
    log(table)
    if args.output:
        md, js = write_comparison(rows, args.output, overwrite=args.overwrite, table=table)
        log(f"written to {md} and {js}")
    return 0


def add_robustness(sub) -> None:
    p = sub.add_parser("robustness", help="Dice of runs under graded MRI artefacts and geometry changes",
                       description="Score each run's model on perturbed copies of its test cases: MRI "
                                   "artefacts (TorchIO: noise, spike, ghosting, motion, bias field, "
                                   "anisotropy) and in-plane translation and zoom (label moved alike), each at "
                                   "graded severities, with fixed seeds so every model sees identical inputs. "
                                   "Writes robustness.csv (per case, with a quality score), robustness.json "
                                   "(means per perturbation and severity) and robustness.png.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders sharing the same test split")
    p.add_argument("--data", help="task folder (default: the one the first run was trained on)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to use (default test)")
    p.add_argument("-o", "--output", help="output folder (default: RUN/robustness_SPLIT of the first run)")
    p.add_argument("--severities", type=argtypes.positive_int, default=3, help="graded severities per perturbation (default 3)")
    p.add_argument("--cases", type=argtypes.positive_int, metavar="N", help="use only the first N cases of the split")
    p.add_argument("--seed", type=argtypes.seed, default=0, help="seed of the perturbations and fire masks (default 0)")
    p.add_argument("--ensemble", type=argtypes.ensemble, default=4, metavar="K",
                   help="stochastic passes per prediction, for the quality score (default 4)")
    p.add_argument("--perturbation", action="append", metavar="NAME",
                   help="only this perturbation (repeatable; default all: noise, spike, ghosting, motion, "
                        "bias_field, anisotropy, translation, zoom_in, zoom_out)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_robustness)


def cmd_robustness(args: argparse.Namespace) -> int:
    from .data.runfolder import RunFolder
    from .experiments.robustness import run_robustness

    out = Path(args.output) if args.output else RunFolder(args.runs[0]).robustness_dir(args.split)
    rows = run_robustness(args.runs, args.data, args.split, out_dir=out, severities=args.severities,
                          cases=args.cases, seed=args.seed, ensemble=args.ensemble,
                          perturbations=args.perturbation, overwrite=args.overwrite,
                          progress=case_progress("robustness"))
    log(f"{len(rows)} rows written to {out / 'robustness.csv'}; summary {out / 'robustness.json'}, "
        f"plot {out / 'robustness.png'}")
    return 0


def add_report(sub) -> None:
    p = sub.add_parser("report", help="a Markdown report: comparison, robustness, quality, example cases",
                       description="Gather evaluated runs into OUT/README.md with figures: the comparison table "
                                   "(a 'mednca compare' JSON if given or found, else from each eval_test.json), "
                                   "robustness plots, quality score vs Dice, overlays of the best, median and "
                                   "worst test case, and a GIF of the NCA growing (Med-NCA runs).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders evaluated with 'mednca evaluate RUN'")
    p.add_argument("-o", "--output", default="report", help="output folder (default report/)")
    p.add_argument("--compare", metavar="FILE", help="a 'mednca compare' JSON (or its Markdown)")
    p.add_argument("--robustness", action="append", metavar="DIR",
                   help="a 'mednca robustness' output folder (repeatable; default: RUN/robustness_SPLIT if present)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="evaluated split (default test)")
    p.add_argument("--data", help="task folder for the example cases (default: each run's training data)")
    p.add_argument("--seed", type=argtypes.seed, default=0, help="seed of anything predicted for the figures (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from .experiments.report import make_report

    path = make_report(args.runs, args.output, compare=args.compare, robustness=args.robustness,
                       split=args.split, data_dir=args.data, seed=args.seed, overwrite=args.overwrite)
    log(f"report written to {path}")
    return 0


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time and memory of mednca against a plain PyTorch Med-NCA",
                       description="Training and inference time, peak memory and GFLOP/s of mednca against a "
                                   "plain PyTorch Med-NCA with the same weights and fire masks (checked to agree "
                                   "before timing); each measurement in a fresh process. Prints Markdown tables.")
    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from .experiments.bench import run_cli

    return run_cli(args)


# -- the parser ------------------------------------------------------------------------------------
#: The commands in the order ``mednca --help`` lists them.
COMMANDS = (add_demo, add_train, add_predict, add_serve, add_export, add_evaluate,
            add_robustness, add_report, add_models, add_download, add_presets,
            add_info, add_bench, add_compare)

#: Commands that run no network (every other one gets :func:`mednca.runtime.tune_for_networks`).
LIGHT_COMMANDS = ("download", "presets", "info", "bench", "models")


def build_parser() -> argparse.ArgumentParser:
    """The ``mednca`` argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="mednca", epilog=EPILOG,
        description="Med-NCA: medical image segmentation with Neural Cellular Automata on a plain CPU.")
    parser.add_argument("--version", action="version", version=f"mednca {__version__}")
    parser.set_defaults(func=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mednca ARGV``; returns the exit status (0 ok, 1 a user error, 2 usage, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.func is None:
        parser.print_help()
        return 2
    try:
        if args.command not in LIGHT_COMMANDS:
            tune_for_networks()
        return args.func(args)
    except MedNCAError as exc:
        print(f"mednca: error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into a reader that stopped (e.g. `| head`): not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:  # anything else is a bug: keep its traceback
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"mednca: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mednca: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130


def _resume_hint(args: argparse.Namespace) -> str:
    if args.command != "train":
        return ""
    launch = "torchrun ... -m mednca train --distributed" if args.distributed else "mednca train"
    return f" (checkpoint saved; continue with '{launch} --resume --data {args.data} --out {args.out}')"
