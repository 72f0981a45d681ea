"""Next-token choice per request: penalties, masks, greedy or sampled, and log-probabilities.

Each row follows its own request's settings. A request with a seed draws its randomness from its own
generator, so its output does not depend on what else shares the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmserve.config import GenerationConfig


@dataclass(slots=True)
class SampleRow:
    gen: GenerationConfig
    token_ids: list[int]          # prompt + generated so far (for penalties)
    num_generated: int
    stop_ids: frozenset[int]      # eos + stop_token_ids, masked while below min_new_tokens
    generator: torch.Generator | None


@dataclass(slots=True)
class SampleResult:
    token_ids: list[int]
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]   # (chosen, top-k pairs)


def _apply_penalties(logits: torch.Tensor, rows: list[SampleRow]) -> None:
    for i, row in enumerate(rows):
        g = row.gen
        if g.repetition_penalty != 1.0 and row.token_ids:
            ids = torch.tensor(sorted(set(row.token_ids)), dtype=torch.long, device=logits.device)
            picked = logits[i, ids]
            logits[i, ids] = torch.where(picked > 0, picked / g.repetition_penalty, picked * g.repetition_penalty)
        if (g.presence_penalty or g.frequency_penalty) and row.num_generated:
            gen_ids = torch.tensor(row.token_ids[-row.num_generated:], dtype=torch.long, device=logits.device)
            counts = torch.bincount(gen_ids, minlength=logits.shape[1]).to(logits.dtype)
            logits[i] -= g.frequency_penalty * counts + g.presence_penalty * (counts > 0).to(logits.dtype)
        min_new = g.min_new_tokens or 0
        if row.num_generated < min_new and row.stop_ids:
            logits[i, list(row.stop_ids)] = float("-inf")
        if g.bad_token_ids:
            logits[i, g.bad_token_ids] = float("-inf")


def _filter(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) what top-k, top-p and min-p exclude; rows already temperature-scaled."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab)
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    sorted_logits = sorted_logits.masked_fill(ranks >= k[:, None], float("-inf"))
    probs = sorted_logits.softmax(-1)
    cum = probs.cumsum(-1)
    # Keep a token if the mass before it is below top_p (so the first token always stays).
    sorted_logits = sorted_logits.masked_fill(cum - probs > top_p[:, None], float("-inf"))
    sorted_logits = sorted_logits.masked_fill(probs < min_p[:, None] * probs[:, :1], float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def _logprobs(raw: torch.Tensor, chosen: list[int], rows: list[SampleRow]):
    wanted = [i for i, r in enumerate(rows) if r.gen.logprobs is not None]
    out: list = [None] * len(rows)
    if not wanted:
        return out
    lp = raw[wanted].float().log_softmax(-1)
    for j, i in enumerate(wanted):
        k = rows[i].gen.logprobs
        top = []
        if k:
            vals, ids = lp[j].topk(k)
            top = list(zip(ids.tolist(), vals.tolist()))
        out[i] = (lp[j, chosen[i]].item(), top)
    return out


def sample(logits: torch.Tensor, rows: list[SampleRow], default_generator: torch.Generator) -> SampleResult:
    """logits: [B, vocab] float32, one row per request that needs a token this step."""
    raw = logits
    if any(r.gen.repetition_penalty != 1.0 or r.gen.presence_penalty or r.gen.frequency_penalty
           or r.gen.bad_token_ids or (r.gen.min_new_tokens or 0) > r.num_generated for r in rows):
        logits = logits.clone()
        _apply_penalties(logits, rows)
    # on CPU max(-1) finds the same first maximal index as argmax, ~2.5x faster (64 x 49152:
    # 0.83 vs 2.11 ms, 2 threads)
    chosen = logits.max(-1).indices if logits.device.type == "cpu" else logits.argmax(-1)
    sampled = [i for i, r in enumerate(rows) if not r.gen.greedy]
    if sampled:
        idx = torch.tensor(sampled, device=logits.device)
        gens = [rows[i].gen for i in sampled]
        temp = torch.tensor([g.temperature for g in gens], device=logits.device)[:, None]
        scaled = logits[idx] / temp
        scaled = _filter(scaled,
                         torch.tensor([g.top_k for g in gens], device=logits.device),
                         torch.tensor([g.top_p for g in gens], device=logits.device),
                         torch.tensor([g.min_p for g in gens], device=logits.device))
        probs = scaled.softmax(-1)
        # Gumbel-style race: argmax(p / E) with E ~ Exp(1) samples from p; E from each row's generator.
        noise = torch.empty_like(probs)
        for j, i in enumerate(sampled):
            noise[j].exponential_(generator=rows[i].generator or default_generator)
        chosen[idx] = (probs / noise).argmax(-1)
    token_ids = chosen.tolist()
    return SampleResult(token_ids, _logprobs(raw, token_ids, rows))
