"""The FastAPI app: routes, API keys, CORS, the concurrency cap, and the session sweeper.

`create_app(pipeline, config)` takes a running Pipeline, so tests and embedders can serve one they
built; `lmserve serve api_server` builds it from flags (see server.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lmserve.serve import chat, completions, interactive, misc
from lmserve.serve.context import ServerConfig, ServerContext
from lmserve.serve.errors import APIError, install_error_handlers

logger = logging.getLogger(__name__)

# Requests that hold engine work; the cap counts these, not cheap probes and scrapes.
GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/chat/interactive"})


def _api_key_check(keys: list[str]):
    encoded = [k.encode() for k in keys]
    bearer = HTTPBearer(auto_error=False, description="one of the keys given to --api-keys")

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if credentials is None:
            raise APIError(401, "missing API key: send it as 'Authorization: Bearer <key>'",
                           code="invalid_api_key")
        given = credentials.credentials.encode()
        # Compare against every key, without stopping at a match, so timing tells nothing.
        ok = False
        for key in encoded:
            ok |= hmac.compare_digest(key, given)
        if not ok:
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")
    return check


class ConcurrencyCap:
    """ASGI middleware: past `limit` generation requests in flight (streams until their last byte),
    answer 429 at once instead of queueing without bound."""

    def __init__(self, app, limit: int):
        self.app, self.limit, self.active = app, limit, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in GENERATION_PATHS:
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            body = json.dumps(APIError(429, f"too many concurrent requests: this server takes at most "
                                            f"{self.limit} at once (--max-concurrent-requests); retry later",
                                       code="too_many_requests").body()).encode()
            await send({"type": "http.response.start", "status": 429,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1")]})
            await send({"type": "http.response.body", "body": body})
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def create_app(pipeline, config: ServerConfig | None = None, close_pipeline: bool = False) -> FastAPI:
    """An app serving `pipeline`. With close_pipeline, shutting the app down also stops the engine."""
    config = config or ServerConfig()
    ctx = ServerContext(pipeline, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        sweeper = asyncio.create_task(ctx.sessions.expire_forever())
        logger.info("serving %s", ctx.model_name)
        try:
            yield
        finally:
            sweeper.cancel()
            ctx.sessions.end_all()
            if close_pipeline:
                await asyncio.to_thread(pipeline.close)

    docs = not config.disable_docs
    app = FastAPI(title="lmserve", summary="OpenAI-compatible LLM server", version="0.1.0", lifespan=lifespan,
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    app.state.ctx = ctx
    install_error_handlers(app)
    guarded = [Depends(_api_key_check(config.api_keys))] if config.api_keys else []
    app.include_router(misc.open_router)
    for router in (misc.router, chat.router, completions.router, interactive.router):
        app.include_router(router, dependencies=guarded)
    if config.max_concurrent_requests is not None:
        app.add_middleware(ConcurrencyCap, limit=config.max_concurrent_requests)
    if config.allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.allow_origins,
                           allow_credentials=config.allow_credentials, allow_methods=config.allow_methods,
                           allow_headers=config.allow_headers)
    return app

