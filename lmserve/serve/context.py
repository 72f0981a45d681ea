"""The server's settings and the per-app state its handlers share (no module globals)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request

from lmserve.serve.errors import APIError
from lmserve.serve.metrics import ServerMetrics
from lmserve.serve.sessions import SessionStore
from lmserve.serve.stats import read_limits


@dataclass(slots=True)
class ServerConfig:
    """What `lmserve serve api_server` sets besides the engine (names are LMDeploy's flags)."""
    served_model_name: str | None = None       # the name clients pass as "model"; default: the model's
    api_keys: list[str] | None = None
    allow_origins: list[str] = field(default_factory=lambda: ["*"])
    allow_credentials: bool = False
    allow_methods: list[str] = field(default_factory=lambda: ["*"])
    allow_headers: list[str] = field(default_factory=lambda: ["*"])
    max_concurrent_requests: int | None = None
    disable_docs: bool = False
    session_ttl: float = 600.0                 # seconds an idle session keeps its history and K/V

    def __post_init__(self):
        if self.api_keys is not None:
            if not self.api_keys or any(not k for k in self.api_keys):
                raise ValueError("--api-keys needs at least one key, and keys must not be empty")
        if self.max_concurrent_requests is not None and self.max_concurrent_requests < 1:
            raise ValueError(f"--max-concurrent-requests must be >= 1, got {self.max_concurrent_requests}")
        if not self.session_ttl > 0:
            raise ValueError(f"--session-ttl must be > 0 seconds, got {self.session_ttl}")


class ServerContext:
    def __init__(self, pipeline, config: ServerConfig):
        self.pipeline, self.config = pipeline, config
        self.model_name = config.served_model_name or pipeline.model_name or "default"
        self.created = int(time.time())
        self.limits = read_limits(pipeline)
        self.metrics = ServerMetrics(pipeline, self.model_name)
        self.sessions = SessionStore(pipeline, config.session_ttl)
        self.active: set = set()           # in-flight Generations

    def abort_all(self) -> int:
        """Abort every in-flight generation (the drain timeout has passed); returns how many."""
        active = list(self.active)
        for generation in active:
            generation.abort()
        return len(active)

    def check_model(self, name: str | None) -> None:
        # OpenAI's SDKs always send a model; accept ours and, for scripts written against a path,
        # the model's own name too.
        if name is None or name in (self.model_name, self.pipeline.model_name):
            return
        raise APIError(404, f"the model {name!r} does not exist; this server serves {self.model_name!r} "
                            f"(see GET /v1/models)", param="model", code="model_not_found")


def get_context(request: Request) -> ServerContext:
    return request.app.state.ctx
