"""POST /v1/chat/completions, streamed (SSE) or not, shaped exactly as OpenAI's."""
from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from lmserve.serve.context import ServerContext, get_context
from lmserve.serve.errors import bad_request
from lmserve.serve.formatting import (TokenText, chat_logprobs, event_stream, new_id, sse, usage,
                                      with_stream_tail)
from lmserve.serve.generation import ClientGone, Generation, unless_disconnected
from lmserve.serve.prompts import (check_prompt, encode_messages, fan_out, generation_config,
                                   template_messages)
from lmserve.serve.protocol import ERROR_RESPONSES, ChatCompletionRequest, ChatCompletionResponse

router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=ERROR_RESPONSES,
             summary="Chat completion (OpenAI); `stream: true` answers with server-sent events")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    ctx = get_context(request)
    arrival = time.monotonic()
    ctx.check_model(body.model)
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs=true", param="top_logprobs")
    if body.session_id is not None and body.n > 1:
        raise bad_request("a session (session_id) holds one conversation, so n must be 1", param="n")
    ids = encode_messages(ctx.pipeline, template_messages(body.messages))
    max_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_new = check_prompt(ids, ctx.limits, body.max_completion_tokens or body.max_tokens, max_param)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    min_new = body.min_new_tokens if body.min_new_tokens is not None else body.min_tokens
    gen = generation_config(body, max_new, logprobs, min_new)

    session = ctx.sessions.acquire(body.session_id) if body.session_id is not None else None
    generation = Generation(ctx, fan_out([ids], gen, body.n, body.session_id), arrival)

    async def close():
        await generation.aclose()
        if session is not None:
            ctx.sessions.release(session)

    streaming = False
    try:
        await unless_disconnected(request, generation.start())
        if body.stream:
            streaming = True        # from here the response owns the generation and closes it
            return event_stream(_stream(ctx, body, generation, len(ids)), close)
        await unless_disconnected(request, generation.collect())
        return JSONResponse(_answer(ctx, body, generation, len(ids)))
    except ClientGone:
        return Response(status_code=499)     # nobody is listening; nginx's code for it
    finally:
        if not streaming:
            await close()


def _answer(ctx: ServerContext, body: ChatCompletionRequest, generation: Generation, prompt_len: int) -> dict:
    token_text = TokenText(ctx.pipeline.tokenizer)
    choices = []
    for index in sorted(generation.last):
        out = generation.last[index]
        lp = chat_logprobs(out.logprobs, out.token_ids, token_text) if body.logprobs else None
        choices.append({"index": index, "message": {"role": "assistant", "content": out.text},
                        "logprobs": lp, "finish_reason": out.finish_reason})
    outs = generation.last.values()
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
            "model": ctx.model_name, "system_fingerprint": None, "choices": choices,
            "usage": usage(prompt_len, sum(len(o.token_ids) for o in outs),
                           min((o.num_cached_tokens for o in outs), default=0))}


async def _stream(ctx: ServerContext, body: ChatCompletionRequest, generation: Generation, prompt_len: int):
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    base = {"id": new_id("chatcmpl"), "object": "chat.completion.chunk", "created": int(time.time()),
            "model": ctx.model_name, "system_fingerprint": None}
    if include_usage:
        base["usage"] = None       # OpenAI: every chunk has usage null but the last
    token_text = TokenText(ctx.pipeline.tokenizer)
    sent_logprobs = [0] * body.n

    def chunk(choice: dict) -> str:
        return sse({**base, "choices": [choice]})

    def usage_chunk():
        if not include_usage:
            return None
        outs = generation.last.values()
        return {**base, "choices": [], "usage": usage(
            prompt_len, sum(len(o.token_ids) for o in outs), min((o.num_cached_tokens for o in outs), default=0))}

    async def chunks():
        for index in range(body.n):
            yield chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None})
        async for index, out in generation.outputs():
            lp = None
            if body.logprobs:
                start, end = sent_logprobs[index], len(out.token_ids)
                lp = chat_logprobs(out.logprobs[start:end], out.token_ids[start:end], token_text)
                sent_logprobs[index] = end
            if not out.delta_text and not out.finished and not (lp and lp["content"]):
                continue        # text held back (a partial character or a possible stop string)
            yield chunk({"index": index, "delta": {"content": out.delta_text} if out.delta_text else {},
                         "logprobs": lp, "finish_reason": out.finish_reason if out.finished else None})

    async for line in with_stream_tail(chunks(), usage_chunk):
        yield line
