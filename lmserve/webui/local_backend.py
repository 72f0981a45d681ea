"""The chat page's backend on an engine in this process, through lmserve's Python API.

Each turn sends the whole conversation under the tab's session id; the engine keeps the K/V of the
longest common prefix with the session's previous turn, so only the new tokens are prefilled, and
a conversation the page edited (a stopped answer, a changed system prompt) still comes out right.
"""
from __future__ import annotations

import logging
import uuid
from typing import AsyncIterator

import jinja2

from lmserve.config import GenerationConfig
from lmserve.engine.engine import RequestTooLongError
from lmserve.webui.backend import BackendError, ChatBackend, ChatParams, TurnDelta, TurnEnd

logger = logging.getLogger(__name__)


def generation_config(params: ChatParams) -> GenerationConfig:
    sampling = params.temperature > 0
    return GenerationConfig(max_new_tokens=params.max_new_tokens, do_sample=sampling,
                            temperature=params.temperature if sampling else 0.8,
                            top_p=params.top_p, top_k=params.top_k)


class LocalBackend(ChatBackend):
    def __init__(self, pipeline, owns_pipeline: bool = False):
        self.pipeline = pipeline
        self.owns_pipeline = owns_pipeline
        self.description = f"{pipeline.model_name} (local engine)"
        self._running: dict[int, str] = {}      # session id -> request id of its running turn

    def new_session_id(self) -> int:
        return self.pipeline.new_session().session_id

    async def stream(self, session_id: int, messages: list[dict], params: ChatParams
                     ) -> AsyncIterator[TurnDelta | TurnEnd]:
        if session_id in self._running:
            raise BackendError("this conversation is still answering; press Stop first")
        request_id = uuid.uuid4().hex
        self._running[session_id] = request_id
        try:
            # Closing this generator (a cancelled page event) aborts the request in the engine.
            async for out in self.pipeline.generate(messages, generation_config(params), session_id=session_id,
                                                    request_id=request_id):
                if out.delta_text:
                    yield TurnDelta(out.delta_text)
                if out.finished:
                    yield TurnEnd(out.finish_reason, len(out.token_ids))
        except RequestTooLongError as e:
            raise BackendError(f"{e}. Press Reset to start a new conversation, or send a shorter message.") from e
        except (ValueError, jinja2.TemplateError) as e:       # a role order the template refuses, say
            raise BackendError(str(e)) from e
        finally:
            if self._running.get(session_id) == request_id:
                del self._running[session_id]

    def stop(self, session_id: int) -> bool:
        request_id = self._running.get(session_id)
        if request_id is None:
            return False
        self.pipeline.loop.abort(request_id)
        return True

    def end_session(self, session_id: int) -> None:
        self.stop(session_id)
        self.pipeline.end_session(session_id)

    def close(self) -> None:
        if self.owns_pipeline:
            self.pipeline.close()
