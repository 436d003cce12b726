"""The benchmark's results as Markdown tables (printed by ``mednca bench``, kept in benchmarks/RESULTS.md).

Every function takes parts of the results dict of
:func:`mednca.experiments.bench.run.run_benchmark` and returns Markdown lines.
"""

from __future__ import annotations

from typing import Any

from ...formats import MISSING, cell


def _get(run: dict | None, key: str) -> Any:
    return run.get(key) if run else None


def _x(ratio: float | None) -> str:
    return MISSING if ratio is None else f"{ratio:.2f}×"


def _ms(run: dict | None) -> str:
    """A run's median time in ms, or why there is none."""
    if not run:
        return MISSING
    if "error" in run:
        return "mem-guard" if run.get("memory_abort") else "error"
    return cell(run["median_s"] * 1e3 if "median_s" in run else None, ".4g")


def _mb(run: dict | None, key: str = "peak_rss_mb") -> str:
    return cell(_get(run, key), ".0f")


def _delta(check: dict) -> str:
    """The check's max |mednca - plain| over the output, or why there is none."""
    if check.get("memory_abort"):
        return "unchecked (mem)"
    if "error" in check:
        return "error"
    text = cell(check.get("max_abs_diff"), ".1e")
    return text if check.get("ok", True) else f"{text} FAILED"


def _rate(run: dict | None) -> str:
    """Effective GFLOP/s with the % of the matmul rate in brackets."""
    if not run or "effective_gflops" not in run:
        return MISSING
    return f"{run['effective_gflops']:.1f} ({cell(run['pct_of_matmul'], '.0f')} %)"


def _config_text(case: dict) -> str:
    """``C16 h128 S64 64² patch 16² b48``: channels, hidden width, steps, side, patch, batch or slices."""
    p = case["params"]
    text = f"C{p['channels']} h{p['hidden']} S{p['steps']} {p['side']}²"
    if p["patch"]:
        text += f" patch {p['patch']}²"
    if case.get("input", {}).get("slices"):
        text += f" ×{case['input']['slices']} slices"
    elif p["batch"]:
        text += f" b{p['batch']}"
    return text


def _volume_text(cases: list[dict], data: str | None) -> str:
    """Which volume the volume cases segmented ("" without volume cases)."""
    info = next((c["input"] for c in cases if c.get("input")), None)
    if info is None:
        return ""
    shape = "×".join(map(str, info["shape"]))
    if info["source"] == "synthetic":
        return f" Volume cases: a synthetic {shape} volume (no --data)."
    return f" Volume cases: MSD image `{info['case']}` ({shape}) of `{data}`."


def _header(results: dict[str, Any]) -> list[str]:
    meta, mm = results["meta"], results["matmul"]
    title = f"### mednca {meta['mednca_version']} vs plain PyTorch Med-NCA"
    if meta["quick"]:
        title += " (--quick smoke run, not a measurement)"
    denormals = ("flushed to zero in both implementations (as mednca's commands do)."
                 if meta.get("flush_denormal", False) else "kept (--keep-denormals).")
    memory = (" Freed memory kept by malloc for reuse in both implementations (as mednca's commands do)."
              if meta.get("retain_memory", False) else "")
    text = (f"torch {meta['torch_version']}, {meta['threads']} threads, {meta['cpu']} ({meta['cpu_count']} cores), "
            f"{meta['started']}, load average at start {meta['loadavg_start']}. fp32 `torch.mm` "
            f"{mm['n']}×{mm['n']}: **{mm['gflops']:.1f} GFLOP/s** (median of {mm['repeats']}). Times are medians "
            f"after {meta['warmup']} warm-up; each measurement in a fresh process (peak RSS = that process, "
            "torch included). GFLOP/s = all-cell FLOPs / time (training = 3× forward), % of the matmul rate in "
            "brackets. Δ = max |mednca − plain| over the output (same weights, same fire masks). Denormal floats "
            + denormals + memory + _volume_text(results["cases"], meta.get("data")))
    return [title, "", text, ""]


def _comparison_table(title: str, rows: list[dict], grads: bool) -> list[str]:
    """mednca against plain, one row per case; ``grads`` adds the check's gradient column."""
    if not rows:
        return []
    head = ("| case | config | mednca ms | plain ms | speed-up | mednca GFLOP/s | plain GFLOP/s | mednca peak MB "
            "| plain peak MB | Δ output |" + (" rel Δ grad |" if grads else ""))
    lines = [f"#### {title}", "", head, "|" + "---|" * (head.count("|") - 1)]
    for c in rows:
        m, p, chk = c.get("mednca"), c.get("plain"), c.get("check", {})
        row = (f"| {c['name']} | {_config_text(c)} | {_ms(m)} | {_ms(p)} | {_x(c.get('speedup'))} | "
               f"{_rate(m)} | {_rate(p)} | {_mb(m)} | {_mb(p)} | {_delta(chk)} |")
        if grads:
            row += f" {cell(chk.get('grad_max_rel_diff'), '.1e')} |"
        lines.append(row)
    return lines + [""]


def _sweep_table(title: str, key: str, rows: list[dict]) -> list[str]:
    """mednca against plain along one setting (``side`` or ``steps``), ascending."""
    if not rows:
        return []
    lines = [f"#### {title}", "", f"| {key} | mednca ms | plain ms | speed-up | mednca peak MB | plain peak MB "
             "| mednca GFLOP/s | plain GFLOP/s |", "|---|---|---|---|---|---|---|---|"]
    for c in sorted(rows, key=lambda c: c["params"][key]):
        m, p = c.get("mednca"), c.get("plain")
        lines.append(f"| {c['params'][key]} | {_ms(m)} | {_ms(p)} | {_x(c.get('speedup'))} | {_mb(m)} | {_mb(p)} | "
                     f"{_rate(m)} | {_rate(p)} |")
    return lines + [""]


def _sweeps(cases: list[dict]) -> list[str]:
    """The image-side sweep, and the steps sweep (with the side sweep's point at its side)."""
    side_rows = [c for c in cases if c["group"] == "side"]
    steps_rows = [c for c in cases if c["group"] == "steps"]
    lines = []
    if side_rows:
        base = side_rows[0]["params"]
        lines += _sweep_table(f"Inference vs image side (one slice, C{base['channels']}, {base['steps']} steps "
                              "per level)", "side", side_rows)
    if steps_rows:
        base_side = steps_rows[0]["params"]["side"]
        steps_rows += [c for c in side_rows if c["params"]["side"] == base_side]
        base = steps_rows[0]["params"]
        lines += _sweep_table(f"Inference vs steps per level (one {base_side}² slice, C{base['channels']})", "steps",
                              steps_rows)
    return lines


def _onnx_table(cases: list[dict]) -> list[str]:
    """The exported model under onnxruntime, beside ``infer-slice64`` in PyTorch."""
    rows = [c for c in cases if c["group"] == "onnx"]
    if not rows:
        return []
    torch_run = next((c.get("mednca") for c in cases if c["name"] == "infer-slice64"), None)
    lines = ["#### ONNX Runtime (`mednca export`: dense steps, fire masks drawn in the graph)", "",
             "| case | config | weights | file KiB | onnxruntime ms | mednca (PyTorch) ms, `infer-slice64` "
             "| peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for c in rows:
        m = c.get("mednca", {})
        size = m.get("file_bytes")
        lines.append(f"| {c['name']} | {_config_text(c)} | {c['params'].get('weights', 'fp32')} | "
                     f"{cell(size and size / 1024, '.0f')} | {_ms(m)} | {_ms(torch_run)} | {_mb(m)} |")
    return lines + [""]


def _volume_tables(cases: list[dict]) -> list[str]:
    """``predict_volume`` of one volume on one thread: time, peak RSS, and RSS above the imports."""
    lines = []
    for c in (c for c in cases if c["group"] == "volume1t"):
        m, inp = c.get("mednca", {}), c.get("input", {})
        volume = f"{inp.get('case') or 'synthetic'} {'×'.join(map(str, inp.get('shape', [])))}"
        above = m["peak_rss_mb"] - m["rss_after_import_mb"] if "median_s" in m else None
        lines += [f"#### One volume, default preset, 1 thread (`{c['name']}`)", "",
                  "| volume | config | time s | peak RSS MB | RSS after import MB | above import MB |",
                  "|---|---|---|---|---|---|",
                  f"| {volume} | {_config_text(c)} | {cell(m.get('median_s'), '.3f', _ms(m))} | {_mb(m)} | "
                  f"{_mb(m, 'rss_after_import_mb')} | {cell(above, '.0f')} |", ""]
    return lines


def _speedups(ratios: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}×" for name, value in ratios.items()) or MISSING


def _ratio_lines(r: dict[str, Any]) -> list[str]:
    pct = r.get("effective_pct_of_matmul", {})
    return ["#### Ratios (same run)", "",
            f"- training speed-up of mednca over plain: {_speedups(r.get('train_speedup', {}))} "
            f"(geometric mean {cell(r.get('train_speedup_geomean'), '.2f')}×)",
            f"- inference speed-up: {_speedups(r.get('infer_speedup', {}))} "
            f"(geometric mean {cell(r.get('infer_speedup_geomean'), '.2f')}×)",
            f"- inference speed-up in the sweeps: {_speedups(r.get('scale_speedup', {}))}",
            "- effective rate as % of the matmul rate (mednca / plain): "
            + (", ".join(f"{k} {cell(v.get('mednca'), '.0f')} / {cell(v.get('plain'), '.0f')} %"
                         for k, v in pct.items()) or MISSING), ""]


def _problems(results: dict[str, Any]) -> list[str]:
    """The measurements stopped at the memory limit, and the failures."""
    lines = []
    if results.get("memory_aborts"):
        lines += [f"mem-guard: aborted at the memory limit ({results['meta']['max_rss_mb'] / 1024:.1f} GB): "
                  + ", ".join(results["memory_aborts"]) + ".", ""]
    if results.get("failures"):
        lines += ["**Failures:**", "", *(f"- {f}" for f in results["failures"]), ""]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The results of a benchmark run as Markdown: a header on the machine and the method, then
    one table per group of cases, the ratios, and any memory aborts and failures."""
    cases = results["cases"]
    lines = _header(results)
    lines += _comparison_table("Training iteration (forward + backward + Adam step)",
                               [c for c in cases if c["group"] == "train"], True)
    lines += _comparison_table("Inference", [c for c in cases if c["group"] == "infer"], False)
    lines += _sweeps(cases)
    lines += _onnx_table(cases)
    lines += _volume_tables(cases)
    lines += _ratio_lines(results.get("ratios", {}))
    lines += _problems(results)
    return "\n".join(lines)
