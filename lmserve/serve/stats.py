"""What the server reads from the engine: fixed limits once, live load on demand.

The engine is touched only on its own thread, through `EngineLoop.call`, so a snapshot never races a
step. `call` blocks until the loop thread gets to it (at most one step), so async code runs it in a
worker thread.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineLimits:
    session_len: int        # most tokens one sequence (prompt + answer) may hold
    cache_tokens: int       # tokens the whole KV cache holds
    vocab_size: int         # token ids must be below this


@dataclass(frozen=True, slots=True)
class EngineLoad:
    running: int
    waiting: int
    kv_cache_usage: float   # fraction of KV blocks in use, 0..1
    prefix_queries: int     # full blocks looked up in the prefix cache
    prefix_hits: int        # of those, found
    preemptions: int

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0


def read_limits(pipeline) -> EngineLimits:
    def snapshot(engine):
        return engine.session_len, engine.cache_tokens, engine.runner.model_cfg.vocab_size
    session_len, cache_tokens, model_vocab = pipeline.loop.call(snapshot)
    # An id past the embedding table would fail the whole engine step, not only its request; an id
    # the tokenizer cannot decode is as bad. So ids must be below both.
    return EngineLimits(session_len, cache_tokens, min(model_vocab, len(pipeline.tokenizer)))


def read_load(pipeline) -> EngineLoad:
    def snapshot(engine):
        s, b = engine.scheduler, engine.blocks
        return EngineLoad(len(s.running), len(s.waiting), b.usage, b.prefix_queries, b.prefix_hits,
                          s.num_preemptions)
    return pipeline.loop.call(snapshot)
