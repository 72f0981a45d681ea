"""GET /health, GET /v1/models, POST /tokenize, GET /metrics."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from lmserve.serve.context import get_context
from lmserve.serve.errors import bad_request
from lmserve.serve.prompts import encode_messages, template_messages
from lmserve.serve.protocol import ERROR_RESPONSES, ModelCard, ModelList, TokenizeRequest, TokenizeResponse

open_router = APIRouter()       # no API key needed: probes and scrapers
router = APIRouter()


@open_router.get("/health", summary="200 while the engine runs, 503 once it has stopped",
                 responses={503: ERROR_RESPONSES[503]})
async def health(request: Request):
    ctx = get_context(request)
    loop = ctx.pipeline.loop
    if not loop.alive:
        why = f"the engine has stopped: {loop.failure}" if loop.failure else "the engine thread has stopped"
        return JSONResponse({"error": {"message": why, "type": "service_unavailable",
                                       "param": None, "code": "engine_dead"}}, status_code=503)
    return JSONResponse({"status": "ok"})


@open_router.get("/metrics", summary="Prometheus metrics, all named lmserve:*",
                 response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request):
    ctx = get_context(request)
    # Reading the engine waits for its thread (up to one step): keep the event loop free meanwhile.
    body = await asyncio.to_thread(ctx.metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES, summary="The served model (OpenAI)")
async def list_models(request: Request):
    ctx = get_context(request)
    card = ModelCard(id=ctx.model_name, created=ctx.created, max_model_len=ctx.limits.session_len)
    return ModelList(data=[card])


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES,
             summary="Token ids of a raw prompt, or of messages after the chat template")
async def tokenize(body: TokenizeRequest, request: Request):
    ctx = get_context(request)
    ctx.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("send exactly one of prompt (raw text) and messages (chat)", param="prompt")
    if body.messages is not None:
        ids = encode_messages(ctx.pipeline, template_messages(body.messages))
    else:
        ids = ctx.pipeline.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=ctx.limits.session_len)
