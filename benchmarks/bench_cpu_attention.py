"""CPU paged decode attention: the C++ kernel against the torch reference, per layer and end to end.

Part "layer": one layer's decode attention at SmolLM2-135M's shape (9 query heads, 3 KV heads,
head_dim 64, fp32 cache, blocks of 64 tokens, shuffled block tables) for each batch size and
context length; the kernel and paged_decode_attention_ref run interleaved in the same process
and the table gives both medians and both best times with their ratios (on a shared machine
the best is the less disturbed figure).

Part "engine": batched greedy generation of the first N ShareGPT prompts (first human turn,
chat template applied) through lmserve.pipeline, once with the kernel and once with it turned
off by LMSERVE_DISABLE_CPU_EXT=paged_attention (everything else unchanged); each run is a child
process of this script, run one after the other. Reports output tokens/s and whether the two
runs produced the same tokens.

    python benchmarks/bench_cpu_attention.py [--part layer|engine|all] [--num-prompts 64]
        [--max-new-tokens 128] [--repeat 20] [--reference-first] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

# Run from a source checkout without installing: the repository root holds the package.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmserve.kernels.cpu_paged_attention import load_extension, paged_decode_attention  # noqa: E402
from lmserve.kernels.paged_attention import paged_decode_attention_ref  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 9, 3, 64, 64
SHAREGPT = Path("/work/shared/data/sharegpt_v3_1000.json")


def layer_problem(batch: int, context: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    per_seq = -(-context // BLOCK)
    blocks = batch * per_seq + 1
    k_cache = torch.randn(blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=gen)
    v_cache = torch.randn(blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=gen)
    tables = torch.randperm(blocks, generator=gen)[:batch * per_seq].view(batch, per_seq)
    lens = torch.full((batch,), context, dtype=torch.long)
    q = torch.randn(batch, HEADS, HEAD_DIM, generator=gen)
    return q, k_cache, v_cache, tables, lens


def bench_layer(batches, contexts, repeat: int) -> list[dict]:
    if load_extension() is None:
        raise SystemExit("the CPU paged-attention extension is unavailable here; nothing to compare")
    rows = []
    print(f"{'B':>3} {'ctx':>5} | median: {'ref ms':>8} {'kernel ms':>9} {'speed-up':>8} | "
          f"best: {'ref ms':>8} {'kernel ms':>9} {'speed-up':>8}")
    for batch in batches:
        for context in contexts:
            args = layer_problem(batch, context) + (HEAD_DIM ** -0.5,)
            want = paged_decode_attention_ref(*args)
            torch.testing.assert_close(paged_decode_attention(*args), want, rtol=1e-5, atol=2e-6)
            times = {"ref": [], "kernel": []}
            for _ in range(repeat):           # interleaved: both see the same machine load
                for name, fn in (("ref", paged_decode_attention_ref),
                                 ("kernel", paged_decode_attention)):
                    start = time.perf_counter()
                    fn(*args)
                    times[name].append(time.perf_counter() - start)
            ref_ms = statistics.median(times["ref"]) * 1e3
            ker_ms = statistics.median(times["kernel"]) * 1e3
            rows.append({"batch": batch, "context": context, "ref_ms": ref_ms, "kernel_ms": ker_ms,
                         "ref_best_ms": min(times["ref"]) * 1e3,
                         "kernel_best_ms": min(times["kernel"]) * 1e3,
                         "speedup": ref_ms / ker_ms})
            r = rows[-1]
            print(f"{batch:>3} {context:>5} | {'':7} {ref_ms:>8.3f} {ker_ms:>9.3f} "
                  f"{ref_ms / ker_ms:>7.2f}x | {'':5} {r['ref_best_ms']:>8.3f} "
                  f"{r['kernel_best_ms']:>9.3f} {r['ref_best_ms'] / r['kernel_best_ms']:>7.2f}x",
                  flush=True)
    return rows


def sharegpt_prompts(n: int) -> list[str]:
    """The first human turn of the first n conversations that have one."""
    with open(SHAREGPT, encoding="utf-8") as f:
        data = json.load(f)
    prompts = []
    for item in data:
        turns = [t for t in item.get("conversations", []) if t.get("from") == "human"]
        if turns and turns[0].get("value", "").strip():
            prompts.append(turns[0]["value"])
        if len(prompts) == n:
            break
    return prompts


def engine_worker(num_prompts: int, max_new_tokens: int) -> dict:
    """One timed batched run in this process (the parent sets the environment)."""
    from lmserve import EngineConfig, GenerationConfig, pipeline

    prompts = sharegpt_prompts(num_prompts)
    with pipeline(backend_config=EngineConfig(device="cpu")) as pipe:
        pipe(["Hi!"], GenerationConfig(max_new_tokens=4))          # warm-up: builds, first-call costs
        gen = GenerationConfig(max_new_tokens=max_new_tokens)
        start, cpu_start = time.perf_counter(), time.process_time()
        outs = pipe(prompts, gen)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    out_tokens = sum(o.generate_token_len for o in outs)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "output_tokens": out_tokens,
            "input_tokens": sum(o.input_token_len for o in outs),
            "output_tok_s": out_tokens / seconds, "token_ids": [o.token_ids for o in outs],
            "threads": torch.get_num_threads()}


def bench_engine(num_prompts: int, max_new_tokens: int, reference_first: bool) -> dict:
    """Wall-clock tok/s is what users see; on a shared machine the other jobs' load can change
    between the two runs, so the CPU seconds each run used (both threads) are reported as well."""
    runs = {}
    order = [("kernel", ""), ("reference", "paged_attention")]
    for label, disable in (order[::-1] if reference_first else order):
        env = dict(os.environ, LMSERVE_DISABLE_CPU_EXT=disable, PYTHONPATH=str(ROOT))
        cmd = [sys.executable, __file__, "--engine-worker", "--num-prompts", str(num_prompts),
               "--max-new-tokens", str(max_new_tokens)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{label} run failed:\n{done.stderr[-4000:]}")
        runs[label] = json.loads(done.stdout.strip().splitlines()[-1])
        r = runs[label]
        print(f"{label:>9}: {r['output_tokens']} output tokens ({r['input_tokens']} prompt) in "
              f"{r['seconds']:.1f} s = {r['output_tok_s']:.1f} output tok/s; "
              f"{r['cpu_seconds']:.1f} CPU s", flush=True)
    ker, ref = runs["kernel"], runs["reference"]
    same = ker["token_ids"] == ref["token_ids"]
    ratio = ker["output_tok_s"] / ref["output_tok_s"]
    cpu_ratio = ref["cpu_seconds"] / ker["cpu_seconds"]
    print(f"kernel / reference: wall-clock throughput {ratio:.2f}x, CPU time {cpu_ratio:.2f}x less; "
          f"identical tokens: {same}")
    for r in runs.values():
        del r["token_ids"]
    return {"runs": runs, "speedup": ratio, "cpu_time_ratio": cpu_ratio, "identical_tokens": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("layer", "engine", "all"), default="all")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--context", type=int, nargs="+", default=[128, 400, 1024])
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--num-prompts", "--num_prompts", type=int, default=64)
    p.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=128)
    p.add_argument("--reference-first", "--reference_first", action="store_true",
                   help="engine part: run the reference before the kernel")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--engine-worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.engine_worker:
        print(json.dumps(engine_worker(a.num_prompts, a.max_new_tokens)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    result = {}
    if a.part in ("layer", "all"):
        result["layer"] = bench_layer(a.batch, a.context, a.repeat)
    if a.part in ("engine", "all"):
        if not SHAREGPT.exists():
            raise SystemExit(f"{SHAREGPT} not found: the engine part needs the ShareGPT sample")
        result["engine"] = bench_engine(a.num_prompts, a.max_new_tokens, a.reference_first)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
