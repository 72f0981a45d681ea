"""One layer's CPU decode attention with a float32, int8 and int4 KV cache, at SmolLM2-135M's shape.

9 query heads, 3 KV heads, head_dim 64, blocks of 64 tokens, shuffled block tables. Rows: the
float32 kernel (csrc/paged_attention_cpu.cpp), the int8 and int4 kernels
(csrc/paged_attention_kvq_cpu.cpp; int4 with the Hadamard rotation, as --quant-policy 4 runs it),
and the int8 torch reference (dequantize the blocks, then SDPA) for scale. Median and best of
--repeat calls, interleaved, with the cache bytes each reads.

    python benchmarks/bench_kv_quant_attention.py [--batch 1 16 64] [--context 512 2048] [--repeat 20]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmserve.kernels.cpu_paged_attention import paged_decode_attention  # noqa: E402
from lmserve.kernels.cpu_paged_attention_quant import (load_extension,  # noqa: E402
                                                       paged_decode_attention_quant)
from lmserve.kernels.kv_quant import QuantKVCache  # noqa: E402
from lmserve.kernels.paged_attention_quant import paged_decode_attention_quant_ref  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 9, 3, 64, 64


def problem(batch: int, context: int):
    gen = torch.Generator().manual_seed(0)
    per_seq = -(-context // BLOCK)
    blocks = batch * per_seq + 1
    k = torch.randn(blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=gen)
    v = torch.randn(blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=gen)
    caches = {}
    for bits, rotate in ((8, False), (4, True)):
        cache = QuantKVCache.allocate(blocks, BLOCK, KV_HEADS, HEAD_DIM, bits, rotate)
        cache.store(k.view(-1, KV_HEADS, HEAD_DIM), v.view(-1, KV_HEADS, HEAD_DIM), torch.arange(blocks * BLOCK))
        caches[bits] = cache
    tables = torch.randperm(blocks, generator=gen)[:batch * per_seq].view(batch, per_seq)
    lens = torch.full((batch,), context, dtype=torch.long)
    q = torch.randn(batch, HEADS, HEAD_DIM, generator=gen)
    return q, k, v, caches, tables, lens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--context", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    if load_extension() is None:
        raise SystemExit("the quantized-KV CPU extension is unavailable here; nothing to measure")
    scale = HEAD_DIM ** -0.5
    print(f"torch threads {torch.get_num_threads()}")
    print(f"{'B':>3} {'ctx':>5} {'cache':<10} {'MB read':>8} {'median ms':>10} {'best ms':>8}")
    for batch in args.batch:
        for context in args.context:
            q, k, v, caches, tables, lens = problem(batch, context)
            runs = {
                "fp32": (lambda: paged_decode_attention(q, k, v, tables, lens, scale), 2 * HEAD_DIM * 4),
                "int8": (lambda: paged_decode_attention_quant(q, caches[8], tables, lens, scale), 2 * 68),
                "int4+rot": (lambda: paged_decode_attention_quant(q, caches[4], tables, lens, scale), 2 * 36),
                "int8 ref": (lambda: paged_decode_attention_quant_ref(q, caches[8], tables, lens, scale), 2 * 68),
            }
            times = {name: [] for name in runs}
            for _ in range(args.repeat):
                for name, (fn, _) in runs.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - start) * 1e3)
            for name, (_, per_head) in runs.items():
                mb = batch * context * KV_HEADS * per_head / 1e6
                print(f"{batch:>3} {context:>5} {name:<10} {mb:>8.2f} {statistics.median(times[name]):>10.3f} "
                      f"{min(times[name]):>8.3f}")


if __name__ == "__main__":
    main()
