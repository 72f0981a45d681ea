"""POST /v1/completions (OpenAI's legacy text completions): raw prompts, no chat template.

`prompt` is a string, a list of strings, a list of token ids or a list of such lists; with n
choices each, answered prompt-major (choice index = prompt index * n + k), as OpenAI does.
"""
from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from lmserve.serve.context import ServerContext, get_context
from lmserve.serve.errors import bad_request
from lmserve.serve.formatting import (TokenText, completion_logprobs, event_stream, new_id, sse, usage,
                                      with_stream_tail)
from lmserve.serve.generation import ClientGone, Generation, unless_disconnected
from lmserve.serve.prompts import check_prompt, encode_text, fan_out, generation_config
from lmserve.serve.protocol import ERROR_RESPONSES, CompletionRequest, CompletionResponse

router = APIRouter()
_DEFAULT_MAX_TOKENS = 16      # OpenAI's default for this endpoint


def _prompts(ctx: ServerContext, prompt) -> tuple[list[list[int]], list[str]]:
    """Token ids of each prompt, and its text (for echo)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    ids, texts = [], []
    for p in prompt:
        if isinstance(p, str):
            ids.append(encode_text(ctx.pipeline, p))
            texts.append(p)
        else:
            ids.append(list(p))
            texts.append(None)
    return ids, texts


@router.post("/v1/completions", response_model=CompletionResponse, responses=ERROR_RESPONSES,
             summary="Text completion (OpenAI legacy); `stream: true` answers with server-sent events")
async def create_completion(body: CompletionRequest, request: Request):
    ctx = get_context(request)
    arrival = time.monotonic()
    ctx.check_model(body.model)
    if body.suffix:
        raise bad_request("suffix (fill-in-the-middle) is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise bad_request(f"best_of must equal n ({body.n}): ranking candidates is not supported", param="best_of")
    if body.echo and body.logprobs is not None:
        raise bad_request("echo with logprobs is not supported (prompt logprobs are not computed)", param="echo")
    prompts, texts = _prompts(ctx, body.prompt)
    if body.session_id is not None and (len(prompts) > 1 or body.n > 1):
        raise bad_request("a session (session_id) holds one conversation: send one prompt and n=1",
                          param="session_id")
    max_tokens = body.max_tokens
    max_new = [check_prompt(p, ctx.limits, max_tokens, param="prompt") for p in prompts]
    if max_tokens is None:       # OpenAI's default of 16, where the session has room for it
        max_tokens = min([_DEFAULT_MAX_TOKENS] + max_new)
    min_new = body.min_new_tokens if body.min_new_tokens is not None else body.min_tokens
    gen = generation_config(body, max_tokens, body.logprobs, min_new)
    echo = [(t if t is not None else ctx.pipeline.tokenizer.decode(p)) if body.echo else ""
            for p, t in zip(prompts, texts)]

    session = ctx.sessions.acquire(body.session_id) if body.session_id is not None else None
    generation = Generation(ctx, fan_out(prompts, gen, body.n, body.session_id), arrival)

    async def close():
        await generation.aclose()
        if session is not None:
            ctx.sessions.release(session)

    prompt_tokens = sum(len(p) for p in prompts)
    streaming = False
    try:
        await unless_disconnected(request, generation.start())
        if body.stream:
            streaming = True
            return event_stream(_stream(ctx, body, generation, echo, prompt_tokens), close)
        await unless_disconnected(request, generation.collect())
        return JSONResponse(_answer(ctx, body, generation, echo, prompt_tokens))
    except ClientGone:
        return Response(status_code=499)
    finally:
        if not streaming:
            await close()


def _answer(ctx, body: CompletionRequest, generation: Generation, echo: list[str], prompt_tokens: int) -> dict:
    token_text = TokenText(ctx.pipeline.tokenizer)
    choices = []
    for index in sorted(generation.last):
        out = generation.last[index]
        lp = (completion_logprobs(out.logprobs, out.token_ids, token_text, 0)
              if body.logprobs is not None else None)
        choices.append({"index": index, "text": echo[index // body.n] + out.text, "logprobs": lp,
                        "finish_reason": out.finish_reason})
    outs = generation.last.values()
    return {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
            "model": ctx.model_name, "system_fingerprint": None, "choices": choices,
            "usage": usage(prompt_tokens, sum(len(o.token_ids) for o in outs),
                           sum(o.num_cached_tokens for i, o in generation.last.items() if i % body.n == 0))}


async def _stream(ctx, body: CompletionRequest, generation: Generation, echo: list[str], prompt_tokens: int):
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    base = {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
            "model": ctx.model_name, "system_fingerprint": None}
    if include_usage:
        base["usage"] = None
    token_text = TokenText(ctx.pipeline.tokenizer)
    num_choices = len(generation.jobs)
    sent_logprobs, text_offset = [0] * num_choices, [0] * num_choices

    def chunk(choice: dict) -> str:
        return sse({**base, "choices": [choice]})

    def usage_chunk():
        if not include_usage:
            return None
        outs = generation.last.values()
        return {**base, "choices": [], "usage": usage(
            prompt_tokens, sum(len(o.token_ids) for o in outs),
            sum(o.num_cached_tokens for i, o in generation.last.items() if i % body.n == 0))}

    async def chunks():
        if body.echo:
            for index in range(num_choices):
                text_offset[index] = len(echo[index // body.n])
                yield chunk({"index": index, "text": echo[index // body.n], "logprobs": None,
                             "finish_reason": None})
        async for index, out in generation.outputs():
            lp = None
            if body.logprobs is not None:
                start, end = sent_logprobs[index], len(out.token_ids)
                lp = completion_logprobs(out.logprobs[start:end], out.token_ids[start:end], token_text,
                                         text_offset[index])
                sent_logprobs[index] = end
                text_offset[index] += sum(len(t) for t in lp["tokens"])
            if not out.delta_text and not out.finished and not (lp and lp["tokens"]):
                continue
            yield chunk({"index": index, "text": out.delta_text, "logprobs": lp,
                         "finish_reason": out.finish_reason if out.finished else None})

    async for line in with_stream_tail(chunks(), usage_chunk):
        yield line
