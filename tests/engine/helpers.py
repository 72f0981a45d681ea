"""Helpers to run an Engine to completion and to get transformers' greedy reference."""
from __future__ import annotations

import torch

from lmserve.config import EngineConfig, GenerationConfig
from lmserve.engine.engine import Engine


def run_all(engine: Engine, prompts: list[list[int]], gen: GenerationConfig, session_ids=None) -> list:
    """Add all prompts at once, step until done; returns the final outputs in prompt order."""
    for i, ids in enumerate(prompts):
        engine.add_request(f"r{i}", ids, gen, None if session_ids is None else session_ids[i])
    done = {}
    while engine.has_work():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    return [done[f"r{i}"] for i in range(len(prompts))]


def make_engine(loaded, **kwargs) -> Engine:
    kwargs.setdefault("num_blocks", 256)
    kwargs.setdefault("cache_block_seq_len", 16)
    return Engine(loaded, EngineConfig(**kwargs))


@torch.inference_mode()
def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int, eos_ids) -> list[int]:
    out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    ids = out[0, len(prompt_ids):].tolist()
    for i, t in enumerate(ids):
        if t in eos_ids:
            return ids[:i]
    return ids
