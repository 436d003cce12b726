"""One NCA level's run of steps against the matrix products inside it, timed alone.

    python benchmarks/level_parts.py --channels 16 --batch 48 --side 16

Times ``mednca.nn.steps.run_steps`` over 64 steps (forward without gradient, and forward +
backward) and, at the same shapes, the perception conv forward and backward and the per-cell
network's products forward and backward by themselves: the difference is what the steps spend
outside matrix products (gathers, scatters, element-wise passes, Python).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mednca.runtime import flush_denormals
from mednca.runtime import retain_freed_memory
from mednca.nn.level import NCALevel
from mednca.nn.steps import CHUNK, run_steps


def median_ms(fn, n: int) -> float:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--side", type=int, default=16)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    flush_denormals()
    retain_freed_memory()
    c, steps = args.channels, args.steps
    level = NCALevel(c, 128, 0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        level.fc1.weight.normal_(0, 0.01, generator=torch.Generator().manual_seed(1))
    x = torch.randn((args.batch, args.side, args.side, c), generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    fired = [level.fire_indices(x.permute(0, 3, 1, 2), g) for _ in range(steps)]

    def forward() -> None:
        with torch.no_grad():
            run_steps(x, level.packed_weights(), fired)

    def forward_backward() -> None:
        run_steps(x, level.packed_weights(), fired).sum().backward()

    w = level.packed_weights()
    wv, w0, w1 = (t.detach() for t in w)
    padded = F.pad(x.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="reflect")
    seen = F.conv2d(padded, wv)
    n_f = fired[0].numel()
    feats, go = torch.randn((n_f, 3 * c + 1)), torch.randn((n_f, c))
    hidden = torch.randn((n_f, 128)).relu_()
    g_w0, g_w1 = torch.zeros_like(w0), torch.zeros_like(w1)

    def conv_fwd() -> None:
        for _ in range(steps):
            F.conv2d(padded, wv)

    def conv_bwd() -> None:
        for _ in range(steps):
            torch.ops.aten.convolution_backward(seen, padded, wv, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                                [True, True, False])

    def mlp_fwd() -> None:
        for _ in range(steps):
            for s in range(0, n_f, CHUNK):
                torch.mm(torch.mm(feats[s:s + CHUNK], w0.t()), w1.t())

    def mlp_bwd() -> None:
        for _ in range(steps):
            for s in range(0, n_f, CHUNK):
                gh = go[s:s + CHUNK] @ w1
                g_w1.addmm_(go[s:s + CHUNK].t(), hidden[s:s + CHUNK])
                g_w0.addmm_(gh.t(), feats[s:s + CHUNK])
                gh @ w0

    n = args.repeats
    parts = {name: median_ms(fn, n) for name, fn in
             (("conv forward", conv_fwd), ("conv backward", conv_bwd), ("network forward", mlp_fwd),
              ("network backward", mlp_bwd))}
    print(f"C{c} batch {args.batch} side {args.side}, {steps} steps, {torch.get_num_threads()} threads")
    print(f"run_steps forward (no grad): {median_ms(forward, n):.1f} ms")
    print(f"run_steps forward + backward: {median_ms(forward_backward, n):.1f} ms")
    for name, ms in parts.items():
        print(f"  {name} alone: {ms:.1f} ms")
    print(f"  matrix products alone in all: {sum(parts.values()):.1f} ms")


if __name__ == "__main__":
    main()
