"""One hippocampus volume on ONE thread without torch: the exported model on onnxruntime.

    python benchmarks/edge_volume.py [--checkpoint CKPT] [--data DIR] [--steps S] [--repeats 5]

The issue's Raspberry-Pi-class budget is one MSD hippocampus volume at the default preset on one
thread in <= 1 s and <= 200 MB. A process that imports torch already holds 222 MB (RESULTS), so this
measures the edge deployment path instead: the parent (with mednca) exports the model with
``mednca export`` and writes the volume's slices exactly as mednca preprocesses them (resized to
the preset's side, normalised) to a .npy file; a fresh child process that imports only numpy
and onnxruntime (checked: torch is not in ``sys.modules``; Linux, peak RSS from ``VmHWM``) loads the model with one intra-op
thread (memory arena off) and segments all slices, ``--batch`` per call (one stochastic pass,
threshold at 0). The child reports the
median wall time of ``repeats`` runs after one warm-up, the session load time and its peak RSS.
Resampling the masks back to the volume's grid is not included (mednca does it with torch).

Default model: the default ``hippocampus`` preset with seeded random weights (as ``mednca bench``'s
``volume-default-1thread``); ``--checkpoint`` uses a trained model instead. Writes
benchmarks/edge_volume_results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, statistics, sys, time
import numpy as np
import onnxruntime as ort
def peak_rss_mb():  # VmHWM: ru_maxrss would include the (torch-sized) parent's memory
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
path, slices_path, repeats, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rss_import = peak_rss_mb()
t0 = time.perf_counter()
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
options.enable_cpu_mem_arena = False  # the arena keeps every intermediate of the unrolled steps
options.enable_mem_pattern = False
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
load_s = time.perf_counter() - t0
slices = np.load(slices_path)
def run():
    return np.concatenate([session.run(["logits"], {"images": slices[s:s + batch]})[0] > 0
                           for s in range(0, len(slices), batch)])
run()
times = []
for _ in range(repeats):
    t = time.perf_counter()
    mask = run()
    times.append(time.perf_counter() - t)
print(json.dumps({"median_s": statistics.median(times), "times_s": times, "session_load_s": load_s,
                  "rss_after_import_mb": rss_import, "peak_rss_mb": peak_rss_mb(),
                  "torch_imported": "torch" in sys.modules, "slices": int(slices.shape[0]),
                  "foreground_pixels": int(mask.sum()), "onnxruntime": ort.__version__}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="trained checkpoint or run folder (default: seeded random "
                        "weights at the default hippocampus preset)")
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "Task04_Hippocampus")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1, help="slices per onnxruntime call (default 1: least memory)")
    parser.add_argument("--out", type=Path, default=HERE / "edge_volume_results.json")
    args = parser.parse_args()

    import numpy as np

    from mednca.experiments.bench.cases import bench_model, load_volume
    from mednca import load_model
    from mednca.config import MedNCAConfig
    from mednca.data.slices import image_slices
    from mednca.edge.export import export_model

    model = load_model(args.checkpoint) if args.checkpoint else bench_model(MedNCAConfig.preset("hippocampus"))
    c = model.config
    volume, info = load_volume(args.data)
    slices = image_slices(volume, c.axis, c.image_size, c.interpolation, c.normalization).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_model(model, Path(tmp) / "model.onnx")
        np.save(Path(tmp) / "slices.npy", slices.astype(np.float32))
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, str(onnx_path), str(Path(tmp) / "slices.npy"),
                               str(args.repeats), str(args.batch)], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        size = onnx_path.stat().st_size
    result = {"volume": info, "batch": args.batch, "preset": c.name, "steps": c.steps, "channels": c.channels, "side": c.image_size,
              "weights": "trained" if args.checkpoint else "seeded random", "onnx_bytes": size,
              "child_process_wall_s": round(wall, 2), **child,
              "targets": {"time_s": 1.0, "peak_rss_mb": 200.0, "time_ok": child["median_s"] <= 1.0,
                          "peak_rss_ok": child["peak_rss_mb"] <= 200.0},
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    t = result["targets"]
    print(f"| volume | model | time s, 1 thread (target ≤ 1) | peak RSS MB (target ≤ 200) | RSS after import MB | "
          f"session load s | ONNX KiB |\n|---|---|---|---|---|---|---|\n"
          f"| {info.get('case') or 'synthetic'} {'×'.join(map(str, info['shape']))} ({child['slices']} slices) | "
          f"{c.name} C{c.channels} S{c.steps} {c.image_size}² | {child['median_s']:.3f} {'✓' if t['time_ok'] else '✗'} | "
          f"{child['peak_rss_mb']:.0f} {'✓' if t['peak_rss_ok'] else '✗'} | {child['rss_after_import_mb']:.0f} | "
          f"{child['session_load_s']:.2f} | {size / 1024:.0f} |\n\ntorch imported in the child: {child['torch_imported']}")


if __name__ == "__main__":
    main()
