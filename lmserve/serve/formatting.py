"""OpenAI's response pieces: ids, usage, logprobs, SSE framing.

Streams build plain dicts and `json.dumps` them: a chunk per token is the hot path of the HTTP
layer, and pydantic models there would cost more than the rest of it.
"""
from __future__ import annotations

import contextlib
import json
import uuid

from fastapi.responses import StreamingResponse

from lmserve.serve.errors import APIError, sse_error

DONE = "data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


class TokenText:
    """Token id -> its text and UTF-8 bytes, as OpenAI's logprobs show tokens."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        text = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return text, list(text.encode("utf-8"))


def chat_logprobs(entries, token_ids: list[int], token_text: TokenText) -> dict:
    """Chat format: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}."""
    content = []
    for token_id, entry in zip(token_ids, entries):
        if entry is None:
            continue
        chosen, top = entry
        text, raw = token_text(token_id)
        tops = []
        for tid, lp in top:
            t, b = token_text(tid)
            tops.append({"token": t, "logprob": lp, "bytes": b})
        content.append({"token": text, "logprob": chosen, "bytes": raw, "top_logprobs": tops})
    return {"content": content, "refusal": None}


def completion_logprobs(entries, token_ids: list[int], token_text: TokenText, text_offset: int) -> dict:
    """Legacy completions format: parallel lists, top_logprobs as {token: logprob} maps."""
    tokens, chosen_lps, tops, offsets = [], [], [], []
    offset = text_offset
    for token_id, entry in zip(token_ids, entries):
        if entry is None:
            continue
        chosen, top = entry
        text, _ = token_text(token_id)
        tokens.append(text)
        chosen_lps.append(chosen)
        tops.append({token_text(tid)[0]: lp for tid, lp in top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": chosen_lps, "top_logprobs": tops, "text_offset": offsets}


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always runs `on_close`, even when the client leaves before the
    first chunk (then the body generator never starts and its own `finally` would never run)."""

    def __init__(self, content, on_close, **kwargs):
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


def event_stream(body, on_close) -> ClosingStreamingResponse:
    return ClosingStreamingResponse(body, on_close, media_type="text/event-stream",
                                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def with_stream_tail(chunks, usage_chunk):
    """The end every OpenAI stream shares: after `chunks` (an async iterator of SSE lines), the
    usage chunk when `usage_chunk()` returns one, then [DONE]. An APIError raised while streaming
    becomes an error event and ends the stream (the headers were sent, so no status can change)."""
    try:
        async with contextlib.aclosing(chunks):    # a client gone mid-stream closes the inner one too
            async for line in chunks:
                yield line
    except APIError as e:
        yield sse_error(e)
        yield DONE
        return
    final = usage_chunk()
    if final is not None:
        yield sse(final)
    yield DONE
