"""The Python API, named as in LMDeploy: `pipeline()`, `Pipeline`, `Response`, `Session`.

prompts/messages -> chat template -> token ids -> engine (on its own thread) -> text.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import uuid
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Iterator

from lmserve.chat_template import ChatTemplate
from lmserve.config import ChatTemplateConfig, EngineConfig, GenerationConfig
from lmserve.engine.engine import Engine, RequestOutput
from lmserve.engine.engine_loop import EngineLoop
from lmserve.engine.fresh_thread import run_in_fresh_thread
from lmserve.engine.model_runner import resolve_device
from lmserve.model.loader import load_model

logger = logging.getLogger(__name__)
_session_ids = itertools.count(1)


@dataclass(slots=True)
class Response:
    text: str
    generate_token_len: int
    input_token_len: int
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list | None = None
    index: int = 0
    session_id: int | None = None
    num_cached_tokens: int = 0


@dataclass(slots=True)
class Session:
    """A multi-turn conversation whose K/V stays in the engine between turns."""
    session_id: int
    history: list[dict] = field(default_factory=list)
    response: Response | None = None


def _response(out: RequestOutput, text: str, token_ids: list[int], index: int, session_id) -> Response:
    return Response(text, len(out.token_ids), out.input_token_len, out.finish_reason if out.finished else None,
                    token_ids, list(out.logprobs) or None, index, session_id, out.num_cached_tokens)


class Pipeline:
    def __init__(self, model_path: str | None = None, backend_config: EngineConfig | None = None,
                 chat_template_config: ChatTemplateConfig | None = None):
        self.backend_config = backend_config or EngineConfig()
        cfg = self.backend_config
        # the low-bit kernels are CPU kernels; on a GPU a GGUF is dequantized at load
        keep_low_bit = resolve_device(cfg).type == "cpu" and not cfg.dequantize_gguf

        def build():
            loaded = load_model(model_path, load_format=cfg.load_format, keep_gguf_quantized=keep_low_bit)
            return loaded, Engine(loaded, cfg)
        # torch work here would leave this thread an OpenMP team that slows the engine's (fresh_thread.py)
        loaded, self.engine = run_in_fresh_thread(build)
        self.model_name, self.model_path = loaded.model_name, loaded.model_path
        self.tokenizer = loaded.tokenizer
        self.generation_defaults = loaded.generation_defaults
        self.chat_template = ChatTemplate(self.tokenizer, chat_template_config, loaded.chat_template)
        self.loop = EngineLoop(self.engine)

    # ---- prompt handling ------------------------------------------------------------------------
    def encode(self, prompt, do_preprocess: bool = True) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            return list(prompt)
        if do_preprocess:
            text = self.chat_template.render(prompt)
            # The template writes its own special tokens (bos included), so add none here.
            return self.tokenizer.encode(text, add_special_tokens=False)
        if not isinstance(prompt, str):
            raise ValueError("without do_preprocess a prompt must be a string or token ids")
        return self.tokenizer.encode(prompt)

    def _gen(self, gen_config: GenerationConfig | None) -> GenerationConfig:
        gen = gen_config or GenerationConfig()
        if self.chat_template.stop_words:
            gen = replace(gen, stop_words=list(gen.stop_words or []) + [
                w for w in self.chat_template.stop_words if w not in (gen.stop_words or [])])
        return gen

    @staticmethod
    def _as_batch(prompts) -> tuple[list, bool]:
        single = isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], dict))
        return ([prompts] if single else list(prompts)), single

    # ---- sync faces -----------------------------------------------------------------------------
    def _submit(self, ids: list[int], gen: GenerationConfig, session_id: int | None) -> tuple[str, queue.Queue]:
        request_id, q = uuid.uuid4().hex, queue.Queue()
        self.loop.submit(request_id, ids, gen, session_id, q.put)
        return request_id, q

    @staticmethod
    def _next(q: queue.Queue) -> RequestOutput:
        item = q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def _fan_out(self, prompts, gen: GenerationConfig, do_preprocess: bool):
        """Submit every prompt (n times each, seeds offset per copy); returns [(index, queue)]."""
        handles = []
        for i, prompt in enumerate(prompts):
            ids = self.encode(prompt, do_preprocess)
            for k in range(gen.n):
                g = gen if gen.n == 1 or gen.random_seed is None else gen.with_seed(gen.random_seed + k)
                handles.append((i, self._submit(ids, g, None)[1]))
        return handles

    def __call__(self, prompts, gen_config: GenerationConfig | None = None, do_preprocess: bool = True):
        """Generate for a prompt or a batch; returns a Response (or a list, one per prompt).

        With n > 1 each prompt gets a list of n Responses.
        """
        batch, single = self._as_batch(prompts)
        gen = self._gen(gen_config)
        results: list[list[Response]] = [[] for _ in batch]
        for i, q in self._fan_out(batch, gen, do_preprocess):
            while not (out := self._next(q)).finished:
                pass
            results[i].append(_response(out, out.text, out.token_ids, i, None))
        flat = [r[0] if gen.n == 1 else r for r in results]
        return flat[0] if single else flat

    batch_infer = __call__

    def stream_infer(self, prompts, gen_config: GenerationConfig | None = None,
                     do_preprocess: bool = True) -> Iterator[Response]:
        """Yields partial Responses (new text in `.text`) as tokens arrive, tagged with `.index`."""
        batch, _ = self._as_batch(prompts)
        gen = self._gen(gen_config)
        merged: queue.Queue = queue.Queue()
        pending = 0
        for i, prompt in enumerate(batch):
            ids = self.encode(prompt, do_preprocess)
            for _ in range(gen.n):
                self.loop.submit(uuid.uuid4().hex, ids, gen, None, lambda out, i=i: merged.put((i, out)))
                pending += 1
        while pending:
            i, out = merged.get()
            if isinstance(out, BaseException):
                raise out
            pending -= out.finished
            yield _response(out, out.delta_text, out.delta_token_ids, i, None)

    def chat(self, prompt: str, session: Session | None = None, gen_config: GenerationConfig | None = None,
             stream_response: bool = False):
        """One turn of a multi-turn chat; only the new turn's tokens are prefilled."""
        session = session or self.new_session()
        session.history.append({"role": "user", "content": prompt})
        ids = self.encode(session.history)
        request_id, q = self._submit(ids, self._gen(gen_config), session.session_id)

        def finish(out: RequestOutput):
            session.history.append({"role": "assistant", "content": out.text})
            session.response = _response(out, out.text, out.token_ids, 0, session.session_id)
            return session

        if not stream_response:
            while not (out := self._next(q)).finished:
                pass
            return finish(out)

        def stream():
            text, done = "", False
            try:
                while True:
                    out = self._next(q)
                    text += out.delta_text
                    yield _response(out, out.delta_text, out.delta_token_ids, 0, session.session_id)
                    if out.finished:
                        done = True
                        finish(out)
                        return
            finally:
                if not done:    # the consumer stopped early (Ctrl-C): abort, keep what was shown
                    self.loop.abort(request_id)
                    session.history.append({"role": "assistant", "content": text})
        return stream()

    def new_session(self) -> Session:
        return Session(next(_session_ids))

    def end_session(self, session_id: int) -> None:
        self.loop.end_session(session_id)

    # ---- async face (servers) -------------------------------------------------------------------
    async def generate(self, prompt, gen_config: GenerationConfig | None = None, session_id: int | None = None,
                       do_preprocess: bool = True, request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yields RequestOutputs as tokens arrive. Cancelling the consumer aborts the request."""
        ids = self.encode(prompt, do_preprocess)
        request_id = request_id or uuid.uuid4().hex
        loop, q = asyncio.get_running_loop(), asyncio.Queue()

        def deliver(out):       # after a cancel the loop may be gone; the engine has aborted then
            if not loop.is_closed():
                loop.call_soon_threadsafe(q.put_nowait, out)
        self.loop.submit(request_id, ids, self._gen(gen_config), session_id, deliver)
        finished = False
        try:
            while not finished:
                out = await q.get()
                if isinstance(out, BaseException):
                    finished = True
                    raise out
                finished = out.finished
                yield out
        finally:
            if not finished:
                self.loop.abort(request_id)

    # ---- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the engine loop, then the engine's worker processes (tensor parallelism)."""
        self.loop.close()
        self.engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def pipeline(model_path: str | None = None, backend_config: EngineConfig | None = None,
             chat_template_config: ChatTemplateConfig | None = None, log_level: str = "WARNING") -> Pipeline:
    """Load a model (the embedded SmolLM2 by default) and start its engine."""
    logging.getLogger("lmserve").setLevel(log_level)
    return Pipeline(model_path, backend_config, chat_template_config)
