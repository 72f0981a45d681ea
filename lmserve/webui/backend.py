"""What the chat page needs from a model, whether it runs in this process or behind an api_server.

A backend streams one turn of a conversation under a session id (so the engine keeps that
conversation's K/V between turns and prefills only the new tokens), stops a running turn, and ends
a session. Every failure a user can cause or fix comes out as a `BackendError` whose message is fit
to show in the page as it is.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import AsyncIterator


class BackendError(Exception):
    """A failure to show to the user (a prompt too long, a server that refused the request ...)."""


@dataclass(slots=True, frozen=True)
class ChatParams:
    """The page's settings for one turn (their initial values are the flags named in the errors).
    temperature 0 is greedy decoding; top_k 0 is off."""
    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 40
    system_prompt: str = ""

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"--temperature must be in [0, 2], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"--top-k must be >= 0, got {self.top_k}")

    @classmethod
    def from_page(cls, max_new_tokens, temperature, top_p, top_k, system_prompt) -> "ChatParams":
        """From the page's widgets, whose numbers arrive as floats; a bad value is a BackendError."""
        try:
            return cls(int(max_new_tokens), float(temperature), float(top_p), int(top_k), system_prompt or "")
        except (TypeError, ValueError) as e:
            raise BackendError(str(e)) from e


@dataclass(slots=True)
class TurnDelta:
    """New answer text of the running turn."""
    text: str


@dataclass(slots=True)
class TurnEnd:
    """The turn is over: finish_reason is 'stop' (the model ended it), 'length' or 'abort'."""
    finish_reason: str | None
    generated_tokens: int | None = None


def conversation(history: list[dict], user_text: str, system_prompt: str) -> list[dict]:
    """The messages of a turn: the system prompt (if any), the finished turns, the new question."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    return system + list(history) + [{"role": "user", "content": user_text}]


class ChatBackend(ABC):
    """One model behind the page. Sessions are keyed by ids from `new_session_id`."""

    #: shown in the page's title
    description: str = ""

    @abstractmethod
    def new_session_id(self) -> int:
        """An id no other tab of this page (or other client of the same server) is using."""

    @abstractmethod
    def stream(self, session_id: int, messages: list[dict], params: ChatParams
               ) -> AsyncIterator[TurnDelta | TurnEnd]:
        """Generate the answer to `messages` (the whole conversation so far), as TurnDeltas, then
        one TurnEnd. Raises BackendError for a request that cannot be served."""

    @abstractmethod
    def stop(self, session_id: int) -> bool:
        """Abort the session's running turn (its stream ends with finish_reason 'abort').
        False if no turn of it runs."""

    @abstractmethod
    def end_session(self, session_id: int) -> None:
        """Forget the session and free its K/V (aborting a running turn of it)."""

    def close(self) -> None:
        """Release what the backend holds (an engine it owns)."""
