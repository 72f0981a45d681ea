"""`lmserve serve api_client URL`: a terminal chat against any OpenAI-compatible server.

Streams each answer as it is written and keeps the conversation (the server need not). Standard
library only, so it runs wherever lmserve is installed, without the serve extra.
"""
from __future__ import annotations

import json
import logging
import sys
import urllib.error
import urllib.request
from typing import Callable, Iterator

logger = logging.getLogger(__name__)


class APIClientError(Exception):
    pass


class OpenAIClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0):
        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.api_key, self.timeout = api_key, timeout

    def _request(self, method: str, path: str, body: dict | None = None):
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise APIClientError(f"{e.code}: {_error_message(e.read())}") from e
        except urllib.error.URLError as e:
            raise APIClientError(f"cannot reach {self.base}: {e.reason}") from e

    def models(self) -> list[str]:
        with self._request("GET", "/models") as resp:
            return [m["id"] for m in json.load(resp)["data"]]

    def stream_chat(self, model: str, messages: list[dict], **params) -> Iterator[str]:
        """Yields the answer's text pieces as the server sends them."""
        body = {"model": model, "messages": messages, "stream": True, **params}
        with self._request("POST", "/chat/completions", body) as resp:
            for raw in resp:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise APIClientError(chunk["error"].get("message", str(chunk["error"])))
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text


def _error_message(body: bytes) -> str:
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:500]


def chat(url: str, api_key: str | None = None, model: str | None = None, system: str | None = None,
         read: Callable[[str], str] = input, write: Callable[[str], object] = sys.stdout.write,
         **params) -> int:
    """The interactive loop; `exit` (or end of input) quits. Returns a process exit status."""
    client = OpenAIClient(url, api_key)
    try:
        model = model or client.models()[0]
    except (APIClientError, IndexError) as e:
        write(f"error: {e or 'the server lists no model'}\n")
        return 1
    write(f"chatting with {model} at {client.base}; type 'exit' to quit\n")
    history = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            prompt = read("\nuser > ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return 0
        if prompt.strip() == "exit":
            return 0
        if not prompt.strip():
            continue
        history.append({"role": "user", "content": prompt})
        write("assistant > ")
        answer = []
        try:
            for piece in client.stream_chat(model, history, **params):
                answer.append(piece)
                write(piece)
                if hasattr(sys.stdout, "flush"):
                    sys.stdout.flush()
        except APIClientError as e:
            write(f"\nerror: {e}\n")
            history.pop()       # the turn failed; do not send it again
            continue
        write("\n")
        history.append({"role": "assistant", "content": "".join(answer)})
