"""Re-check the Med-NCA paper's claims on a shared split: Med-NCA vs two UNets, same time budget.

    python benchmarks/paper_claims.py --task hippocampus --minutes 30
    python benchmarks/paper_claims.py --task prostate --minutes 20 --robust-cases 4 \\
        --perturbation noise --perturbation translation

For each model (Med-NCA with the task's preset, the paper's ~31 M-parameter ``unet`` and the
size-matched ``unet-small``) it

1. trains on the shared split for ``--minutes`` of wall time (same data, loss, optimiser
   recipe, seed, threads), or resumes/reuses ``benchmarks/out/<task>-<task>-s<seed>[-<model>]``
   (the folders ``train_benchmark.py`` writes) when that run already trained that long;
2. evaluates its best checkpoint on the test split: one pass (Dice, HD95), and for Med-NCA also
   ``--ensemble`` stochastic passes (mean-probability Dice and the quality score);
3. then runs ``mednca compare`` (size, speed, memory), ``mednca robustness`` (identical perturbed
   inputs for every model) and ``mednca report`` over the three runs into
   ``benchmarks/out/claims-<task>/``,

and writes a summary (summary.md/summary.json there) that also replaces this task's section of
``benchmarks/RESULTS.md`` (between ``<!-- claims:<task> -->`` markers). Reads ../shared/data in
place; never copies it. Every step is skipped when its output exists unless ``--redo`` says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from train_benchmark import HERE, TASKS, trained_seconds

from mednca.experiments.compare import compare_runs, write_comparison
from mednca.config import MedNCAConfig, parse_override
from mednca.pipeline.evaluate import evaluate_run
from mednca.experiments.report import make_report
from mednca.experiments.robustness import run_robustness
from mednca.runtime import flush_denormals
from mednca.runtime import retain_freed_memory
from mednca.pipeline.train import train

MODELS = ("mednca", "unet", "unet-small")
#: Unit of HD95 per task (PROMISE12 as shared has no voxel spacing: identity affines).
HD95_UNIT = {"hippocampus": "mm", "prostate": "voxels"}
#: Slack when deciding whether an existing run already trained for the budget (s).
BUDGET_SLACK_S = 30.0


def run_dir(root: Path, task: str, model: str, seed: int) -> Path:
    """The run folder of ``model`` (the naming of train_benchmark.py, so its runs are reused)."""
    return root / f"{task}-{task}-s{seed}{'' if model == 'mednca' else '-' + model}"


def ensure_trained(root: Path, task: str, model: str, seed: int, minutes: float, overrides: dict,
                   data: Path, split: Path, log) -> Path:
    out = run_dir(root, task, model, seed)
    done = trained_seconds(out)
    if done > 0 and done >= minutes * 60 - BUDGET_SLACK_S:
        log(f"{out.name}: trained {done / 60:.1f} min already, reused")
        return out
    log(f"{out.name}: training {minutes - done / 60:.1f} min ...")
    config = MedNCAConfig.preset(task, **{**overrides, "model": model})
    train(data, out, config, seed=seed, split_file=split, max_minutes=minutes - done / 60,
          resume=done > 0, overwrite=done == 0, progress=False)
    for stale in out.glob("eval_test*"):  # the model changed: old evaluations are void
        stale.unlink()
        shutil.rmtree(out / "predictions_test", ignore_errors=True)
    return out


def ensure_evaluated(run: Path, ensemble: int, log) -> dict:
    """Test results of one pass and, for ensemble > 1, of K passes (with the quality score).

    Each is cached as ``eval_test_k{K}.json`` in the run folder (an ``eval_test.json`` already
    made with the same K is reused). Returns ``{"k1": results, "k": results or None}``.
    """
    current = run / "eval_test.json"
    if current.exists():  # keep what is there before anything overwrites it
        k_now = json.loads(current.read_text()).get("ensemble")
        if k_now and not (run / f"eval_test_k{k_now}.json").exists():
            shutil.copy(current, run / f"eval_test_k{k_now}.json")
    out: dict = {"k": None}
    for k in sorted({1, ensemble}):
        cached = run / f"eval_test_k{k}.json"
        if not cached.exists():
            log(f"{run.name}: evaluating on the test split ({k} pass{'es' if k > 1 else ''}) ...")
            evaluate_run(run, "test", ensemble=k, overwrite=True)
            shutil.copy(current, cached)
        out["k1" if k == 1 else "k"] = json.loads(cached.read_text())
    return out


def use_eval(run: Path, k: int) -> None:
    """Make ``eval_test.json`` (what compare and report read) the cached K-pass results."""
    cached = run / f"eval_test_k{k}.json"
    if cached.exists():
        shutil.copy(cached, run / "eval_test.json")


def robustness_table(summary: dict, models: list[str]) -> tuple[str, dict]:
    """Mean Dice per perturbation at its strongest severity and averaged over severities >= 1."""
    perts = list(next(iter(summary.values())))
    lines = ["| perturbation | " + " | ".join(f"{m}: mean / worst (Δ clean)" for m in models) + " |",
             "|---|" + "---|" * len(models)]
    drops: dict = {m: {} for m in models}
    lines.append("| none (clean) | " + " | ".join(f"{summary[m][perts[0]]['0']['dice_mean']:.3f}" for m in models)
                 + " |")
    for p in perts:
        cells = []
        for m in models:
            sev = summary[m][p]
            clean = sev["0"]["dice_mean"]
            perturbed = [v["dice_mean"] for s, v in sev.items() if s != "0"]
            mean, worst = sum(perturbed) / len(perturbed), sev[max(sev, key=int)]["dice_mean"]
            drops[m][p] = {"clean": clean, "mean": mean, "strongest": worst, "mean_drop": clean - mean}
            cells.append(f"{mean:.3f} / {worst:.3f} ({mean - clean:+.3f})")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    avg = {m: sum(d["mean_drop"] for d in drops[m].values()) / len(drops[m]) for m in models}
    lines.append("| **mean Dice loss** | " + " | ".join(f"**{avg[m]:.3f}**" for m in models) + " |")
    return "\n".join(lines), {"per_perturbation": drops, "mean_drop": avg}


def quality_trend(summary: dict, model: str) -> str:
    """Mean quality score per severity (0 = clean) of one model, one line per perturbation."""
    rows = []
    for p, sev in summary[model].items():
        q = [sev[s]["quality_mean"] for s in sorted(sev, key=int)]
        if all(v is not None for v in q):
            rows.append(f"| {p} | " + " → ".join(f"{v:.3f}" for v in q) + " |")
    return "\n".join(["| perturbation | quality, clean → strongest |", "|---|---|", *rows]) if rows else ""


def fmt(value, spec: str) -> str:
    """``value`` formatted, or a dash when it is missing or not finite."""
    return "–" if value is None or value != value else format(value, spec)


def replace_section(path: Path, task: str, text: str) -> None:
    start, end = f"<!-- claims:{task} -->", f"<!-- /claims:{task} -->"
    old = path.read_text() if path.exists() else ""
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="hippocampus",
                        help="shared task, and the preset of the Med-NCA run (default hippocampus)")
    parser.add_argument("--minutes", type=float, default=30, help="training wall time per model (default 30)")
    parser.add_argument("--budget", action="append", default=[], metavar="MODEL=MINUTES",
                        help="a different training time for one model (repeatable); the summary says so")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--ensemble", type=int, default=5, help="Med-NCA test passes for Dice/quality (default 5)")
    parser.add_argument("--robust-cases", type=int, default=20, help="test cases for robustness (default 20)")
    parser.add_argument("--robust-ensemble", type=int, default=2, help="passes per robustness prediction (default 2)")
    parser.add_argument("--severities", type=int, default=3)
    parser.add_argument("--perturbation", action="append", help="only these perturbations (repeatable)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of compare (default 5)")
    parser.add_argument("--skip-robustness", action="store_true")
    parser.add_argument("--skip-report", action="store_true",
                        help="no `mednca report` (its example figures predict 4 passes per case: slow at 256²)")
    parser.add_argument("--redo", action="store_true", help="recompute compare/robustness/report outputs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every model (e.g. for a quick dry run)")
    parser.add_argument("--data", type=Path, help="task folder (default: the shared one of --task)")
    parser.add_argument("--split-file", type=Path, help="split JSON (default: the shared one of --task)")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="folder of the runs (default benchmarks/out)")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md",
                        help="Markdown file whose claims section is replaced (default benchmarks/RESULTS.md)")
    args = parser.parse_args()
    flush_denormals()  # as mednca's commands do
    retain_freed_memory()  # likewise

    t_start = time.perf_counter()
    claims = args.out / f"claims-{args.task}"
    claims.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.0f} s] {msg}", flush=True)

    overrides = dict(parse_override(s) for s in args.set)
    data, split = args.data or TASKS[args.task][0], args.split_file or TASKS[args.task][1]
    budgets = {m: args.minutes for m in args.models}
    for item in args.budget:
        model, _, minutes = item.partition("=")
        if model not in budgets or not minutes:
            parser.error(f"--budget wants MODEL=MINUTES with MODEL one of {', '.join(args.models)}, got {item!r}")
        budgets[model] = float(minutes)
    runs = [ensure_trained(args.out, args.task, m, args.seed, budgets[m], overrides, data, split, log)
            for m in args.models]
    evals = {m: ensure_evaluated(r, args.ensemble if m == "mednca" else 1, log) for m, r in zip(args.models, runs)}

    for r in runs:  # the table compares one pass of every model
        use_eval(r, 1)
    compare_md = claims / "compare.md"
    if args.redo or not compare_md.exists():
        log("comparing (fresh process per run) ...")
        rows = compare_runs(runs, repeats=args.repeats, log=log)
        write_comparison(rows, compare_md, overwrite=True)
    rows = json.loads(compare_md.with_suffix(".json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows

    robust_dir = claims / "robustness"
    if not args.skip_robustness and (args.redo or not (robust_dir / "robustness.json").exists()):
        log(f"robustness on {args.robust_cases} test cases ...")
        run_robustness(runs, split="test", out_dir=robust_dir, severities=args.severities, cases=args.robust_cases,
                       seed=args.seed, ensemble=args.robust_ensemble, perturbations=args.perturbation,
                       overwrite=True)
    robust = json.loads((robust_dir / "robustness.json").read_text()) if (robust_dir / "robustness.json").exists() else None

    for m, r in zip(args.models, runs):  # the report's quality section needs the K-pass results
        use_eval(r, args.ensemble if m == "mednca" else 1)
    if not args.skip_report:
        log("report ...")
        make_report(runs, claims / "report", compare=compare_md.with_suffix(".json"),
                    robustness=[robust_dir] if robust else None, seed=args.seed, overwrite=True, log=log)

    # -- summary ----------------------------------------------------------------------------------
    by_model = dict(zip(args.models, rows))
    unet_params = by_model["unet"]["parameters"] if "unet" in by_model else None
    same = len(set(budgets.values())) == 1
    title = (f"{args.minutes:g} min of training each" if same else
             "training minutes " + ", ".join(f"{m} {b:g}" for m, b in budgets.items()))
    md = [f"### {args.task}: Med-NCA vs UNet, {title} (seed {args.seed})", "",
          f"Command: `python benchmarks/paper_claims.py {' '.join(sys.argv[1:])}`; "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores. Test split: "
          f"{evals[args.models[0]]['k1']['summary']['dice']['n']} cases.", "",
          f"| model | parameters | ÷ unet | test Dice (1 pass) | HD95 ({HD95_UNIT.get(args.task, 'mm')}) | "
          f"Dice ({args.ensemble}-pass mean) | checkpoint | ms / volume | peak RSS (MB) |",
          "|---|---|---|---|---|---|---|---|---|"]
    for m in args.models:
        r, k1 = by_model[m], evals[m]["k1"]["summary"]
        kk = (evals[m]["k"] or {}).get("summary", {}).get("dice")
        kdice = "–" if kk is None else f"{kk['mean']:.3f}"
        ratio = f"1/{unet_params / r['parameters']:.0f}" if unet_params and m != "unet" else "1"
        md.append(f"| {m} | {r['parameters']:,} | {ratio} | {k1['dice']['mean']:.3f} ± {k1['dice']['std']:.3f} | "
                  f"{fmt(k1['hd95_mm']['mean'], '.2f')} | {kdice} | "
                  f"{r['checkpoint_bytes'] / 1e6:.2f} MB | {fmt(r['ms_per_volume'], '.0f')} | {fmt(r.get('rss_peak_mb'), '.0f')} |")
    result = {"task": args.task, "minutes": budgets, "seed": args.seed,
              "models": {m: {"run": str(run_dir(args.out, args.task, m, args.seed)),
                             "parameters": by_model[m]["parameters"],
                             "dice_1pass": evals[m]["k1"]["summary"]["dice"],
                             "hd95_1pass_mm": evals[m]["k1"]["summary"]["hd95_mm"],
                             "dice_kpass": (evals[m]["k"] or {}).get("summary", {}).get("dice"),
                             "quality": (evals[m]["k"] or {}).get("quality"),
                             "ms_per_volume": by_model[m]["ms_per_volume"],
                             "rss_peak_mb": by_model[m].get("rss_peak_mb")} for m in args.models}}
    q = (evals.get("mednca", {}).get("k") or {}).get("quality")
    if q:
        md += ["", f"Quality score without ground truth (Med-NCA, {q['ensemble']} passes): Spearman ρ(score, Dice) = "
                   f"{fmt(q['spearman_dice'], '.3f')}; flagging the worst-scored {q['flag_fraction']:.0%} of cases "
                   f"({q['n_flagged']}) catches {q['failures_caught']} of {q['n_failures']} failures "
                   f"(Dice < {q['failure_dice']})."]
    if robust:
        labels = list(robust["summary"])
        table, drops = robustness_table(robust["summary"], labels)
        result["robustness"] = {"cases": len(robust["cases"]), "ensemble": robust["ensemble"],
                                "severities": robust["severities"], **drops}
        md += ["", f"Robustness ({len(robust['cases'])} test cases, {robust['severities']} severit{'ies' if robust['severities'] > 1 else 'y'}, identical "
                   "perturbed inputs for every model): mean Dice over the severities / Dice at the strongest "
                   "(change of the mean vs clean):", "", table]
        trend = quality_trend(robust["summary"], labels[0])
        if trend:
            result["robustness"]["quality_model"] = labels[0]
            md += ["", f"Quality score of {labels[0]} as the perturbation strengthens (lower = more confident):",
                   "", trend]
        fig = args.results.parent / "figures" / f"claims-{args.task}-robustness.png"
        fig.parent.mkdir(exist_ok=True)
        shutil.copy(robust_dir / "robustness.png", fig)
        md += ["", f"![robustness](figures/{fig.name})"]
    report = claims / "report" / "README.md"
    shown = report.relative_to(HERE.parent) if report.is_relative_to(HERE.parent) else report
    if not args.skip_report:
        md += ["", f"Full report: `{shown}` (not in git)."]
    text = "\n".join(md) + "\n"
    (claims / "summary.md").write_text(text)
    (claims / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results.parent / f"claims_{args.task}.json").write_text(json.dumps(result, indent=2) + "\n")
    replace_section(args.results, args.task, text)
    print(text)
    log("done")


if __name__ == "__main__":
    main()
