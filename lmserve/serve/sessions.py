"""Server-side sessions: a conversation's message history here, its K/V in the engine.

Both keyed by the session id. A session serves one turn at a time; one left idle longer than the
TTL is ended (its history dropped, its KV blocks freed), so clients that vanish do not leak.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field

from lmserve.serve.errors import bad_request

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ServerSession:
    session_id: int
    history: list[dict] = field(default_factory=list)   # messages of the finished turns
    num_tokens: int = 0                                  # prompt + answer tokens of the last turn
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False
    request_id: str | None = None                        # the running turn's engine request


class SessionStore:
    def __init__(self, pipeline, ttl_s: float):
        self.pipeline = pipeline
        self.ttl_s = ttl_s
        self._sessions: dict[int, ServerSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: int) -> ServerSession | None:
        return self._sessions.get(session_id)

    def new_id(self) -> int:
        while (sid := secrets.randbits(62)) in self._sessions:
            pass
        return sid

    def acquire(self, session_id: int, request_id: str | None = None) -> ServerSession:
        """The session for a new turn, created if new; 400 while another turn of it runs."""
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = ServerSession(session_id)
        if session.busy:
            raise bad_request(f"session {session_id} is busy with another request; wait for it, or "
                              f"cancel it with cancel=true", param="session_id", code="session_busy")
        session.busy, session.request_id = True, request_id
        return session

    def release(self, session: ServerSession) -> None:
        session.busy, session.request_id = False, None
        session.last_used = time.monotonic()

    def cancel(self, session_id: int) -> bool:
        """Abort the session's running turn; False if none runs."""
        session = self._sessions.get(session_id)
        if session is None or not session.busy or session.request_id is None:
            return False
        self.pipeline.loop.abort(session.request_id)
        return True

    def end(self, session_id: int) -> bool:
        """Forget the session and free its K/V; a running turn of it is aborted. False if unknown."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        if session.busy and session.request_id is not None:
            self.pipeline.loop.abort(session.request_id)
        self.pipeline.end_session(session_id)
        return True

    def expire(self, now: float | None = None) -> list[int]:
        now = time.monotonic() if now is None else now
        stale = [sid for sid, s in self._sessions.items() if not s.busy and now - s.last_used > self.ttl_s]
        for sid in stale:
            self.end(sid)
        if stale:
            logger.info("ended %d session(s) idle for more than %.0f s", len(stale), self.ttl_s)
        return stale

    def end_all(self) -> None:
        for sid in list(self._sessions):
            self.end(sid)

    async def expire_forever(self) -> None:
        # Checking a few times per TTL bounds how long past its TTL a session lives.
        interval = max(0.05, min(self.ttl_s / 4, 30.0))
        while True:
            await asyncio.sleep(interval)
            self.expire()
