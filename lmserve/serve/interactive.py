"""POST /v1/chat/interactive: LMDeploy's stateful chat.

The server keeps the session's messages and the engine keeps its K/V under the same session id, so
each call sends only the new turn and only the new tokens are prefilled. `interactive_mode: false`
makes the call the session's last (with an empty prompt it only ends the session); `cancel: true`
aborts the running turn. Streams are LMDeploy's: one JSON object per line.
"""
from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from lmserve.serve.context import get_context
from lmserve.serve.errors import APIError, bad_request
from lmserve.serve.formatting import ClosingStreamingResponse
from lmserve.serve.generation import ClientGone, Generation, Job, unless_disconnected
from lmserve.serve.prompts import check_prompt, encode_messages, generation_config, template_messages
from lmserve.serve.protocol import ERROR_RESPONSES, InteractiveRequest, InteractiveResponse

router = APIRouter()


def _reply(text: str, tokens: int, input_tokens: int, history_tokens: int, finish_reason, session_id: int) -> dict:
    return {"text": text, "tokens": tokens, "input_tokens": input_tokens, "history_tokens": history_tokens,
            "finish_reason": finish_reason, "session_id": session_id}


@router.post("/v1/chat/interactive", response_model=InteractiveResponse, responses=ERROR_RESPONSES,
             summary="Stateful chat (LMDeploy): send only the new turn; the server keeps the history")
async def chat_interactive(body: InteractiveRequest, request: Request):
    ctx = get_context(request)
    arrival, sessions = time.monotonic(), ctx.sessions
    if body.cancel:
        if body.session_id < 0:
            raise bad_request("cancel needs the session_id of the turn to abort", param="session_id")
        cancelled = sessions.cancel(body.session_id)
        return _reply("", 0, 0, 0, "abort" if cancelled else None, body.session_id)
    if isinstance(body.prompt, str):
        turn = [{"role": "user", "content": body.prompt}] if body.prompt else []
    else:
        turn = template_messages(body.prompt)
    session_id = body.session_id if body.session_id >= 0 else sessions.new_id()
    if not turn:
        if body.interactive_mode:
            raise bad_request("prompt is empty; send the new turn, or interactive_mode=false to end the session",
                              param="prompt")
        existing = sessions.get(session_id)
        history_tokens = existing.num_tokens if existing else 0
        sessions.end(session_id)
        return _reply("", 0, 0, history_tokens, None, session_id)

    request_id = uuid.uuid4().hex
    session = sessions.acquire(session_id, request_id)
    history_tokens = session.num_tokens
    messages = session.history + turn
    generation = None

    async def close():
        if generation is not None:
            await generation.aclose()
            out = generation.last.get(0)
            if out is not None and out.token_ids:
                # Keep what was said, even if cut short: the engine keeps its K/V as well.
                session.history = messages + [{"role": "assistant", "content": out.text}]
                session.num_tokens = len(ids) + len(out.token_ids)
        sessions.release(session)
        if not body.interactive_mode:
            sessions.end(session_id)

    streaming = False
    try:
        ids = encode_messages(ctx.pipeline, messages)
        max_new = check_prompt(ids, ctx.limits, body.request_output_len, "request_output_len", param="prompt")
        gen = generation_config(body, max_new, None, body.min_new_tokens)
        generation = Generation(ctx, [Job(0, ids, gen, session_id, request_id)], arrival)
        input_tokens = max(0, len(ids) - history_tokens)
        await unless_disconnected(request, generation.start())
        if body.stream:
            streaming = True
            return ClosingStreamingResponse(_lines(generation, input_tokens, history_tokens, session_id), close,
                                            media_type="application/x-ndjson")
        await unless_disconnected(request, generation.collect())
        out = generation.last[0]
        return JSONResponse(_reply(out.text, len(out.token_ids), input_tokens, history_tokens,
                                   out.finish_reason, session_id))
    except ClientGone:
        return Response(status_code=499)
    except APIError as e:
        if "--session-len" in e.message and body.interactive_mode:
            e.message += "; the conversation is too long: end this session (interactive_mode=false) and start anew"
        raise
    finally:
        if not streaming:
            await close()


async def _lines(generation: Generation, input_tokens: int, history_tokens: int, session_id: int):
    try:
        async for _, out in generation.outputs():
            if out.delta_text or out.finished:
                yield json.dumps(_reply(out.delta_text, len(out.token_ids), input_tokens, history_tokens,
                                        out.finish_reason if out.finished else None, session_id),
                                 ensure_ascii=False) + "\n"
    except APIError as e:
        yield json.dumps(e.body()) + "\n"
