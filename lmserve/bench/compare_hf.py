"""`lmserve bench compare-hf`: the same prompts through transformers `generate` (fp32, greedy) and
through lmserve, in one process, so both meet the same machine load; prints the speedups.

- single stream: one prompt, N new tokens, in each; decode tok/s = (N - 1) / (last token time -
  first token time), so the prompt's prefill does not count; best of --single-runs runs, taken
  alternately so drift hits both alike.
- batched: transformers generates the prompts one by one (its plain `generate` loop), lmserve gets
  them all at once (continuous batching); output tok/s = all new tokens / wall time.
Both generate exactly the asked lengths (EOS ignored). The transformers model is loaded from the
same checkpoint (a GGUF through transformers' `gguf_file` support, dequantized to fp32).
"""
from __future__ import annotations

import asyncio
import os
import time

import torch
from tqdm.auto import tqdm

from lmserve.bench.datasets import SampleRequest, load_sharegpt
from lmserve.bench.inprocess import fixed_length_config, generate_timed
from lmserve.bench.report import engine_flags, environment, format_table, write_json


def load_hf_model(model_path: str):
    """transformers' own load of the checkpoint lmserve loaded (fp32, eval mode)."""
    from transformers import AutoModelForCausalLM
    if model_path.endswith(".gguf"):
        folder, name = os.path.split(model_path)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    # lmserve's ignore_eos keeps generating past an EOS token; with no EOS transformers does the same
    # (min_new_tokens instead would ban EOS and so change the greedy tokens)
    model.generation_config.eos_token_id = None
    return model.eval()


class _TokenTimes:
    """A transformers streamer that notes when each new token comes out (its first put is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


@torch.inference_mode()
def hf_generate(model, prompt_ids: list[int], new_tokens: int) -> tuple[list[int], float, list[float]]:
    """Greedy ids of exactly `new_tokens` tokens, the start time and each token's time."""
    streamer = _TokenTimes()
    ids = torch.tensor([prompt_ids])
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         do_sample=False, pad_token_id=0, streamer=streamer)
    return out[0, len(prompt_ids):].tolist(), start, streamer.times


def on_engine_thread(pipe, fn, *args):
    """fn(*args) on the engine's own thread, so transformers and lmserve use the same OpenMP team:
    a second team (this thread's) would slow whichever side runs while the other's sits idle
    (see lmserve/engine/fresh_thread.py). The engine is idle meanwhile: the two never overlap."""
    return pipe.loop.call(lambda _engine: fn(*args))


def _decode_rate(n: int, first: float, last: float) -> float:
    return (n - 1) / (last - first) if n > 1 and last > first else 0.0


def single_stream(pipe, model, prompt_ids: list[int], new_tokens: int, runs: int) -> dict:
    hf, lm = [], []
    request = SampleRequest("", prompt_ids, new_tokens)
    for _ in range(runs):
        _, _, times = on_engine_thread(pipe, hf_generate, model, prompt_ids, new_tokens)
        hf.append(_decode_rate(len(times), times[0], times[-1]))
        record = asyncio.run(generate_timed(pipe, request))
        if not record.success:
            raise RuntimeError(f"lmserve failed the single-stream request: {record.error}")
        lm.append(_decode_rate(record.output_len, record.ttft, record.e2el))
    return {"hf_tok_s": max(hf), "lmserve_tok_s": max(lm), "speedup": max(lm) / max(hf),
            "hf_runs": hf, "lmserve_runs": lm, "new_tokens": new_tokens, "prompt_tokens": len(prompt_ids)}


async def _lmserve_batch(pipe, requests: list[SampleRequest]) -> list[list[int]]:
    async def one(request):
        last = None
        async for out in pipe.generate(request.prompt_ids, fixed_length_config(request.output_len),
                                       do_preprocess=False):
            last = out
        return last.token_ids
    return await asyncio.gather(*(one(r) for r in requests))


def batched(pipe, model, requests: list[SampleRequest], progress: bool) -> dict:
    start = time.perf_counter()
    hf_ids = [on_engine_thread(pipe, hf_generate, model, r.prompt_ids, r.output_len)[0]
              for r in tqdm(requests, desc="transformers one by one", unit="prompt", disable=not progress,
                            leave=False)]
    hf_s = time.perf_counter() - start
    start = time.perf_counter()
    lm_ids = asyncio.run(_lmserve_batch(pipe, requests))
    lm_s = time.perf_counter() - start
    tokens = sum(r.output_len for r in requests)
    if sum(map(len, lm_ids)) != tokens or sum(map(len, hf_ids)) != tokens:
        raise RuntimeError(f"expected {tokens} new tokens from each, got transformers {sum(map(len, hf_ids))}, "
                           f"lmserve {sum(map(len, lm_ids))}")
    return {"prompts": len(requests), "output_tokens": tokens, "input_tokens": sum(r.prompt_len for r in requests),
            "hf_s": hf_s, "lmserve_s": lm_s, "hf_tok_s": tokens / hf_s, "lmserve_tok_s": tokens / lm_s,
            "speedup": hf_s / lm_s, "identical_outputs": sum(a == b for a, b in zip(hf_ids, lm_ids))}


def main(args) -> None:
    from lmserve.api import pipeline
    from lmserve.cli.args import chat_template_config_from_args, engine_config_from_args
    for flag, value in (("--num-prompts", args.num_prompts), ("--output-len", args.output_len),
                        ("--single-output-len", args.single_output_len), ("--single-runs", args.single_runs)):
        if value < 1:
            raise SystemExit(f"lmserve bench compare-hf: {flag} must be >= 1, got {value}")
    pipe = pipeline(args.model_path, engine_config_from_args(args), chat_template_config_from_args(args),
                    log_level=args.log_level)
    try:
        requests, report = load_sharegpt(args.dataset, pipe.tokenizer, args.num_prompts, pipe.engine.session_len,
                                         args.output_len)
        print(report.line())
        model = on_engine_thread(pipe, load_hf_model, pipe.model_path)
        warm = requests[0].prompt_ids
        on_engine_thread(pipe, hf_generate, model, warm, 2)   # first-call costs are not steady state, in either
        asyncio.run(generate_timed(pipe, SampleRequest("", warm, 2)))
        single = single_stream(pipe, model, requests[0].prompt_ids, args.single_output_len, args.single_runs)
        batch = batched(pipe, model, requests, not args.no_progress)
    except (ValueError, OSError) as e:
        raise SystemExit(f"lmserve bench compare-hf: {e}") from e
    finally:
        pipe.close()
    rows = [[f"single-stream decode ({single['new_tokens']} tokens, tok/s)", single["hf_tok_s"],
             single["lmserve_tok_s"], f"{single['speedup']:.2f}x"],
            [f"batched, {batch['prompts']} prompts (output tok/s)", batch["hf_tok_s"], batch["lmserve_tok_s"],
             f"{batch['speedup']:.2f}x"]]
    print(format_table(["", "transformers", "lmserve", "speedup"], rows))
    print(f"transformers fp32 one prompt at a time; lmserve {pipe.model_name}, all {batch['prompts']} prompts "
          f"submitted at once; greedy outputs identical for {batch['identical_outputs']}/{batch['prompts']} prompts")
    if args.json:
        write_json(args.json, {"kind": "compare-hf", "config": {
            "model": pipe.model_name, "dataset": args.dataset, "num_prompts": batch["prompts"],
            "output_len": args.output_len, "engine": engine_flags(args)},
            "single_stream": single, "batched": batch, "environment": environment()})
