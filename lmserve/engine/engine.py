"""The step loop: schedule -> run -> postprocess.

`Engine` is single-threaded and synchronous; `engine_loop.EngineLoop` drives it from a thread for
the Python and HTTP faces.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from lmserve.config import EngineConfig, GenerationConfig
from lmserve.engine.block_manager import BlockManager
from lmserve.engine.detokenizer import IncrementalDetokenizer
from lmserve.engine.model_runner import ModelRunner
from lmserve.engine.scheduler import Scheduler
from lmserve.engine.sequence import Sequence
from lmserve.nn.sampler import SampleRow

logger = logging.getLogger(__name__)


class RequestTooLongError(ValueError):
    """A prompt that can never fit the session length or the KV cache."""


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    delta_text: str
    delta_token_ids: list[int]
    text: str
    token_ids: list[int]                 # all generated ids so far
    finished: bool
    finish_reason: str | None
    input_token_len: int
    num_cached_tokens: int
    logprobs: list = field(default_factory=list)   # per generated token: (chosen, [(id, logprob)])


@dataclass(slots=True)
class _Request:
    seq: Sequence
    detok: IncrementalDetokenizer
    stop_ids: frozenset[int]
    max_total: int
    sent_tokens: int = 0
    text: str = ""


class Engine:
    def __init__(self, loaded, cfg: EngineConfig):
        self.cfg, self.tokenizer = cfg, loaded.tokenizer
        model_cfg = loaded.config
        self.session_len = cfg.session_len or model_cfg.max_position_embeddings
        self.tp = None
        if cfg.tp > 1:
            from lmserve.engine.model_runner import resolve_device
            from lmserve.engine.tp.launcher import TensorParallel
            self.tp = TensorParallel(loaded, cfg, self.session_len, resolve_device(cfg).type)
            self.runner = self.tp.build_runner(model_cfg, loaded.weights(), self.session_len)
        else:
            self.runner = ModelRunner(model_cfg, loaded.weights(), cfg, self.session_len)
        self.block_size = cfg.cache_block_seq_len
        self.blocks = BlockManager(self.runner.num_blocks, self.block_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(self.blocks, cfg.max_batch_size, cfg.max_prefill_token_num)
        self.eos_ids = frozenset(model_cfg.eos_token_ids)
        self.requests: dict[str, _Request] = {}
        self.cache_tokens = self.runner.num_blocks * self.block_size
        logger.info("KV cache: %d blocks x %d tokens = %d tokens, %d bytes per token",
                    self.runner.num_blocks, self.block_size, self.cache_tokens, self.runner.kv_bytes_per_token)

    def cache_summary(self) -> str:
        return (f"KV cache: {self.runner.num_blocks} blocks x {self.block_size} tokens = {self.cache_tokens} tokens, "
                f"{self.runner.kv_bytes_per_token} bytes per token ({self.runner.kv_cache_kind}, {self.runner.device})")

    # ---- requests -------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_ids: list[int], gen: GenerationConfig,
                    session_id: int | None = None) -> None:
        n = len(prompt_ids)
        if n == 0:
            raise ValueError("the prompt is empty")
        if n >= self.session_len:
            raise RequestTooLongError(f"the prompt has {n} tokens, but --session-len is {self.session_len} "
                                      f"(it must leave room for at least one new token)")
        if n + 1 > self.cache_tokens:
            raise RequestTooLongError(f"the prompt has {n} tokens, but the whole KV cache holds only "
                                      f"{self.cache_tokens} tokens")
        vocab = self.runner.model_cfg.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            bad = next(t for t in prompt_ids if not 0 <= t < vocab)
            raise ValueError(f"token id {bad} is outside the model's vocabulary [0, {vocab})")
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already running")
        seq = Sequence(request_id, list(prompt_ids), n, gen, session_id, arrival=time.monotonic())
        if gen.random_seed is not None:
            seq.generator = torch.Generator(device=self.runner.device).manual_seed(gen.random_seed)
        stop_ids = frozenset(gen.stop_token_ids or ()) | (frozenset() if gen.ignore_eos else self.eos_ids)
        detok = IncrementalDetokenizer(self.tokenizer, prompt_ids, gen.skip_special_tokens, gen.stop_words,
                                       gen.include_stop_str_in_output)
        max_total = min(self.session_len, n + gen.max_new_tokens, self.cache_tokens)
        self.scheduler.add(seq)
        self.requests[request_id] = _Request(seq, detok, stop_ids, max_total)

    def abort(self, request_id: str) -> RequestOutput | None:
        req = self.requests.get(request_id)
        if req is None:
            return None
        self.scheduler.finish(req.seq, "abort")
        return self._output(req)

    def end_session(self, session_id: int) -> bool:
        return self.scheduler.end_session(session_id)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # ---- the step -------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        batch, stopped = self.scheduler.schedule()
        outputs = [self._output(self.requests[s.request_id]) for s in stopped]
        if not batch:
            return outputs
        sampling = [s for s, n in zip(batch.seqs, batch.num_new_tokens) if s.num_computed_tokens + n == s.num_tokens]
        rows = [SampleRow(s.gen_config, s.token_ids, s.num_generated, self.requests[s.request_id].stop_ids,
                          s.generator) for s in sampling]
        result = self._run(batch, rows)
        self.scheduler.postprocess(batch)
        for i, seq in enumerate(sampling):
            req = self.requests[seq.request_id]
            token = result.token_ids[i]
            seq.token_ids.append(token)
            if seq.gen_config.logprobs is not None:
                seq.output_logprobs.append(result.logprobs[i])
            reason = self._finish_reason(req, token)
            if reason is not None:
                self.scheduler.finish(seq, reason)
            outputs.append(self._output(req))
        return outputs

    def _run(self, batch, rows):
        if self.tp is None:
            return self.runner.run(batch, rows)
        if self.tp.failure is not None:
            raise self.tp.failure
        try:
            return self.runner.run(batch, rows)
        except Exception as e:      # the ranks are out of step: nothing more can run
            raise self.tp.step_failed(e) from e

    @property
    def fatal_error(self) -> BaseException | None:
        """Set once the engine can run no more steps (a tensor-parallel worker died)."""
        return None if self.tp is None else self.tp.failure

    def close(self) -> None:
        """Stop the tensor-parallel workers, if any; the engine runs no more steps after this."""
        if self.tp is not None:
            self.tp.close()

    def _finish_reason(self, req: _Request, token: int) -> str | None:
        seq, gen = req.seq, req.seq.gen_config
        min_new = gen.min_new_tokens or 0
        if token in req.stop_ids and seq.num_generated > min_new:
            return "stop"           # the stop token's own text is not part of the answer
        if req.detok.add(token):
            return "stop"
        if seq.num_tokens >= req.max_total:
            return "length"
        return None

    def _output(self, req: _Request) -> RequestOutput:
        seq = req.seq
        finished = seq.is_finished
        if finished:
            self.requests.pop(seq.request_id, None)
        gen_ids = seq.generated_ids
        if finished and seq.finish_reason == "stop" and gen_ids and gen_ids[-1] in req.stop_ids:
            gen_ids = gen_ids[:-1]      # the stop token itself is not part of the answer
        new_ids = gen_ids[req.sent_tokens:]
        req.sent_tokens = len(gen_ids)
        delta = req.detok.take_delta(finished)
        req.text += delta
        return RequestOutput(seq.request_id, delta, new_ids, req.text, list(gen_ids), finished,
                             seq.finish_reason, seq.num_prompt_tokens, seq.num_cached_prefix_tokens,
                             list(seq.output_logprobs))
