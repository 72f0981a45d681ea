"""The chat page's backend as a client of a running `lmserve serve api_server`.

A turn is a streamed POST /v1/chat/completions with the whole conversation and the tab's
`session_id`, so the server's engine keeps the conversation's K/V and prefills only the new tokens
(and an expired session only costs a recompute, never a lost history). Stopping closes the stream,
which makes the server abort the request; ending a session is LMDeploy's
`/v1/chat/interactive` call with an empty prompt and `interactive_mode: false`.
"""
from __future__ import annotations

import json
import logging
import secrets
from typing import AsyncIterator

import httpx

from lmserve.webui.backend import BackendError, ChatBackend, ChatParams, TurnDelta, TurnEnd

logger = logging.getLogger(__name__)


def error_message(response: httpx.Response) -> str:
    """The message of an OpenAI-shaped error body, or the start of whatever the server sent."""
    try:
        error = response.json()["error"]
        hint = _HINTS.get(error.get("code"), "")
        return error["message"] + hint
    except (ValueError, KeyError, TypeError, AttributeError):
        return response.text[:500] or response.reason_phrase


_HINTS = {"context_length_exceeded": ". Press Reset to start a new conversation, or send a shorter message."}


class HTTPBackend(ChatBackend):
    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, timeout: float = 600.0):
        root = url.rstrip("/")
        self.root = root[:-3] if root.endswith("/v1") else root
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model, self.timeout = model, timeout
        self.max_model_len: int | None = None      # the server's session length, once connected
        self.description = f"{model or 'the served model'} at {self.root}"
        self._running: set[int] = set()
        self._stopping: set[int] = set()

    # ---- set-up ---------------------------------------------------------------------------------
    def connect(self) -> str:
        """Check that the server answers (and accepts the key); pick its first model unless one
        was named. Returns the model name; a BackendError says what is wrong."""
        try:
            r = httpx.get(self.root + "/v1/models", headers=self.headers, timeout=30)
        except httpx.HTTPError as e:
            raise BackendError(f"cannot reach {self.root}: {e}") from e
        if r.status_code != 200:
            raise BackendError(f"{self.root}/v1/models answered {r.status_code}: {error_message(r)}")
        cards = r.json().get("data", [])
        if self.model is None:
            if not cards:
                raise BackendError(f"{self.root} serves no model")
            self.model = cards[0]["id"]
        card = next((c for c in cards if c.get("id") == self.model), None)
        if card is None:
            raise BackendError(f"{self.root} does not serve {self.model!r}; it serves {[c['id'] for c in cards]}")
        self.max_model_len = card.get("max_model_len")
        self.description = f"{self.model} at {self.root}"
        return self.model

    def new_session_id(self) -> int:
        # Random, so tabs of several pages talking to one server never share a session.
        return secrets.randbits(62)

    # ---- a turn ---------------------------------------------------------------------------------
    async def _max_tokens(self, client: httpx.AsyncClient, messages: list[dict], wanted: int) -> int:
        """The slider's max new tokens, cut to the room the session length leaves (the server
        refuses a max_tokens past it). /tokenize is lmserve's; elsewhere the value goes as it is."""
        try:
            r = await client.post(self.root + "/tokenize", json={"messages": messages, "model": self.model})
        except httpx.HTTPError:
            return wanted
        if r.status_code != 200:
            return wanted       # a prompt error shows up, with its message, on the chat request
        body = r.json()
        room = body["max_model_len"] - body["count"]
        return min(wanted, room) if room >= 1 else wanted

    async def stream(self, session_id: int, messages: list[dict], params: ChatParams
                     ) -> AsyncIterator[TurnDelta | TurnEnd]:
        if session_id in self._running:
            raise BackendError("this conversation is still answering; press Stop first")
        self._running.add(session_id)
        self._stopping.discard(session_id)
        try:
            async with httpx.AsyncClient(headers=self.headers, timeout=self.timeout) as client:
                body = {"model": self.model, "messages": messages, "stream": True,
                        "stream_options": {"include_usage": True}, "session_id": session_id,
                        "max_tokens": await self._max_tokens(client, messages, params.max_new_tokens),
                        "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k}
                async with client.stream("POST", self.root + "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        await r.aread()
                        raise BackendError(f"the server refused the request ({r.status_code}): {error_message(r)}")
                    async for event in self._events(r, session_id):
                        yield event
        except httpx.HTTPError as e:
            raise BackendError(f"lost the connection to {self.root}: {e}") from e
        finally:
            self._running.discard(session_id)
            self._stopping.discard(session_id)

    async def _events(self, response: httpx.Response, session_id: int) -> AsyncIterator[TurnDelta | TurnEnd]:
        reason, tokens = None, None
        async for line in response.aiter_lines():
            if session_id in self._stopping:
                # Leaving the `async with` closes the connection: the server aborts the request.
                yield TurnEnd("abort", tokens)
                return
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise BackendError(chunk["error"].get("message", str(chunk["error"])))
            if chunk.get("usage"):
                tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield TurnDelta(text)
                reason = choice.get("finish_reason") or reason
        yield TurnEnd(reason, tokens)

    def stop(self, session_id: int) -> bool:
        if session_id not in self._running:
            return False
        self._stopping.add(session_id)
        return True

    def end_session(self, session_id: int) -> None:
        self.stop(session_id)
        try:
            r = httpx.post(self.root + "/v1/chat/interactive", headers=self.headers, timeout=30,
                           json={"prompt": "", "session_id": session_id, "interactive_mode": False})
        except httpx.HTTPError as e:
            raise BackendError(f"could not end the session on {self.root}: {e}") from e
        if r.status_code != 200:
            raise BackendError(f"could not end the session ({r.status_code}): {error_message(r)}")
