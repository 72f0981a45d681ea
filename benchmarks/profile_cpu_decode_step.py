"""Where a batched CPU decode step spends its time (a profile, not a speed claim).

Fills the engine with the first N ShareGPT prompts (ignore_eos, so the batch stays full), runs
them past prefill, then times `--steps` pure decode steps twice: once with wall-clock timers
around the engine's phases (schedule, _prepare, model forward, logits, sampling, postprocess
and output), once under torch.profiler for the ops inside the forward (the C++ attention
kernel is wrapped in a record_function so it shows by name).

    python benchmarks/profile_cpu_decode_step.py [--num-prompts 64] [--steps 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_cpu_attention import sharegpt_prompts  # noqa: E402

import lmserve.nn.attention as attention  # noqa: E402
from lmserve.chat_template import ChatTemplate  # noqa: E402
from lmserve.config import EngineConfig, GenerationConfig  # noqa: E402
from lmserve.engine import model_runner  # noqa: E402
from lmserve.engine.engine import Engine  # noqa: E402
from lmserve.model.loader import load_model  # noqa: E402


def timed(table: dict, name: str, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            table[name] += time.perf_counter() - start
    return wrapper


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for the profiled steps (1: work alone, without waits for a "
                        "descheduled second thread on a busy machine)")
    p.add_argument("--dequantize-gguf", action="store_true",
                   help="run the GGUF's low-bit weights as fp32 (default: low-bit, as the CPU engine serves them)")
    p.add_argument("--cpu-gemm-dtype", default="float32", choices=["float32", "bfloat16"])
    a = p.parse_args()
    loaded = load_model(None, keep_gguf_quantized=not a.dequantize_gguf)
    engine = Engine(loaded, EngineConfig(device="cpu", cpu_gemm_dtype=a.cpu_gemm_dtype))
    template = ChatTemplate(loaded.tokenizer, None, loaded.chat_template)
    gen = GenerationConfig(max_new_tokens=10_000, ignore_eos=True)
    for i, text in enumerate(sharegpt_prompts(a.num_prompts)):
        ids = loaded.tokenizer.encode(template.render(text), add_special_tokens=False)
        engine.add_request(f"r{i}", ids, gen)
    seqs = lambda: [r.seq for r in engine.requests.values()]          # noqa: E731
    while any(s.num_generated < 2 for s in seqs()):                  # prefill, first decodes
        engine.step()
    if a.threads:
        torch.set_num_threads(a.threads)
    contexts = [s.num_tokens for s in seqs()]
    print(f"batch {len(contexts)}, context mean {sum(contexts) / len(contexts):.0f} "
          f"(min {min(contexts)}, max {max(contexts)}), {torch.get_num_threads()} threads")

    phases: dict[str, float] = defaultdict(float)
    runner, sched = engine.runner, engine.scheduler
    model_runner.StepPlan.from_batch = staticmethod(timed(phases, "StepPlan.from_batch (inputs)",
                                                           model_runner.StepPlan.from_batch))
    runner.model.forward = timed(phases, "model forward (30 layers)", runner.model.forward)
    runner.model.compute_logits = timed(phases, "compute_logits (lm head)",
                                        runner.model.compute_logits)
    model_runner.sample = timed(phases, "sampler", model_runner.sample)
    sched.schedule = timed(phases, "scheduler.schedule", sched.schedule)
    sched.postprocess = timed(phases, "scheduler.postprocess", sched.postprocess)
    engine._output = timed(phases, "outputs + detokenize", engine._output)
    kernel = attention.paged_decode_attention
    attention.paged_decode_attention = timed(phases, "  of which decode attention", kernel)
    start = time.perf_counter()
    for _ in range(a.steps):
        engine.step()
    total = time.perf_counter() - start
    print(f"\n{a.steps} decode steps, {total / a.steps * 1e3:.1f} ms per step "
          f"({len(contexts) * a.steps / total:.1f} tok/s)")
    for name, seconds in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<32} {seconds / a.steps * 1e3:8.1f} ms  {seconds / total:6.1%}")
    print(f"  {'rest of Engine.step':<32} "
          f"{(total - sum(v for k, v in phases.items() if not k.startswith(' '))) / a.steps * 1e3:8.1f} ms"
          "  (the timed phases overlap: forward includes attention)")

    def named_kernel(*args, **kwargs):
        with record_function("cpu_paged_decode_attention"):
            return kernel(*args, **kwargs)
    attention.paged_decode_attention = named_kernel
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            engine.step()
    print("\ntorch.profiler, ops by self CPU time (all steps):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    main()
