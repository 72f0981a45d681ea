"""Upper bound on decode speed from the linear layers alone, SmolLM2-135M shapes, one process.

For each weight format the script times every linear of one forward step (30 layers x
qkv/o/gate_up/down + the tied 49152 x 576 head) for M activation rows, and reports steps/s,
tokens/s (= M x steps/s) and the ratio to fp32 F.linear measured in the same run.

    python benchmarks/bench_cpu_quant_linear.py [--m 1 4 16 64] [--repeat 20] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

# Run from a source checkout without installing: the repository root holds the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmserve.kernels.cpu_quant_linear import load_extension, quant_linear
from lmserve.kernels.quant_weight import QuantWeight

HIDDEN, INTER, QKV, LAYERS, VOCAB = 576, 1536, 960, 30, 49152


def layer_shapes() -> list[tuple[int, int]]:
    """(out, in) of every linear in one token's forward pass, in execution order."""
    per_layer = [(QKV, HIDDEN), (HIDDEN, HIDDEN), (2 * INTER, HIDDEN), (HIDDEN, INTER)]
    return per_layer * LAYERS + [(VOCAB, HIDDEN)]


def random_quant(fmt: str, out: int, in_features: int, gen: torch.Generator) -> QuantWeight:
    """A weight with the memory form from_gguf_blocks gives for fmt (random codes: speed only).

    "gguf" is the shipped SmolLM2 file's mix: Q4_1 linear layers, Q8_0 tied head.
    """
    if fmt == "gguf":
        fmt = "Q8_0" if out == VOCAB else "Q4_1"
    groups = (out, in_features // 32)
    d = (torch.rand(groups, generator=gen) * 0.01 + 1e-3).half()
    if fmt == "Q8_0":
        q = torch.randint(-128, 128, (out, in_features), generator=gen, dtype=torch.int8)
        return QuantWeight.from_q(q, d, None, 8, 32)
    q = torch.randint(0, 16, (out, in_features), generator=gen, dtype=torch.uint8)
    mins = (d.float() * -8).half() if fmt == "Q4_0" else (torch.rand(groups, generator=gen) * -0.1).half()
    return QuantWeight.from_q(q, d, mins, 4, 32)


def time_step(linears, xs, repeat: int, warmup: int = 3) -> tuple[float, float]:
    """(median seconds of one pass over all linears, sum over linears of their best time).

    The second is the upper bound we report: on a shared 2-core machine a pass of ~5 ms is
    rarely free of preemption by other processes, while each single linear often is. Layers
    still run in model order, so each one finds the cache as decode would leave it.
    """
    per_linear = [[] for _ in linears]
    steps = []
    for rep in range(warmup + repeat):
        t_step = time.perf_counter()
        for times, f, x in zip(per_linear, linears, xs):
            t0 = time.perf_counter()
            f(x)
            times.append(time.perf_counter() - t0)
        if rep >= warmup:
            steps.append(time.perf_counter() - t_step)
    best = sum(min(t[warmup:]) for t in per_linear)
    return statistics.median(steps), best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--formats", nargs="+", default=["fp32", "bf16", "Q4_1", "Q4_0", "Q8_0", "gguf"],
                    help="fp32, bf16, Q4_1, Q4_0, Q8_0, or gguf (Q4_1 layers + Q8_0 head)")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    torch.manual_seed(0)
    t0 = time.perf_counter()
    load_extension()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"extension ready in {time.perf_counter() - t0:.1f} s")
    shapes = layer_shapes()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for fmt in args.formats:
        if fmt in ("fp32", "bf16"):
            dtype = torch.float32 if fmt == "fp32" else torch.bfloat16
            weights = [torch.randn(o, i, generator=gen).to(dtype) * 0.02 for o, i in shapes]
            linears = [lambda x, w=w: F.linear(x, w) for w in weights]
            nbytes = sum(w.numel() * w.element_size() for w in weights)
        else:
            weights = [random_quant(fmt, o, i, gen) for o, i in shapes]
            linears = [lambda x, w=w: quant_linear(x, w) for w in weights]
            nbytes = sum(w.nbytes for w in weights)
            dtype = torch.float32
        for m in args.m:
            xs = [torch.randn(m, i, generator=gen).to(dtype) for _, i in shapes]
            median, best = time_step(linears, xs, args.repeat if m <= 16 else max(3, args.repeat // 4))
            rows.append(dict(format=fmt, m=m, ms=best * 1e3, median_ms=median * 1e3,
                             tok_per_s=m / best, median_tok_per_s=m / median,
                             weight_mb=nbytes / 1e6, gb_per_s=nbytes / best / 1e9))
        del weights, linears
    base = {r["m"]: r["tok_per_s"] for r in rows if r["format"] == "fp32"}
    print("best = sum over linears of each one's fastest run; median = median whole pass")
    print(f"{'format':>6} {'M':>4} {'best ms':>8} {'tok/s':>8} {'vs fp32':>8} {'median ms':>10} "
          f"{'tok/s':>8} {'weights MB':>11} {'GB/s':>6}")
    for r in rows:
        r["vs_fp32"] = r["tok_per_s"] / base[r["m"]] if r["m"] in base else None
        ratio = f"{r['vs_fp32']:.2f}x" if r["vs_fp32"] else "-"
        print(f"{r['format']:>6} {r['m']:>4} {r['ms']:>8.2f} {r['tok_per_s']:>8.1f} {ratio:>8} "
              f"{r['median_ms']:>10.2f} {r['median_tok_per_s']:>8.1f} {r['weight_mb']:>11.1f} "
              f"{r['gb_per_s']:>6.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
