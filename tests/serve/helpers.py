"""Limits of the suite's engine and small helpers shared by the serve tests."""
from __future__ import annotations

import json
import time

import httpx

SESSION_LEN = 4096
BLOCK = 16
NUM_BLOCKS = 224
CACHE_TOKENS = BLOCK * NUM_BLOCKS
API_KEY = "sk-test-key"


def metrics(url: str) -> dict[str, float]:
    """The unlabelled-by-reason lmserve:* samples of /metrics, by name."""
    out = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("lmserve:") and "finished_reason" not in line and "_bucket" not in line:
            name, value = line.rsplit(" ", 1)
            out[name.split("{")[0]] = float(value)
    return out


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def sse_events(response) -> list:
    """Parsed `data:` events of a streamed httpx response ('[DONE]' kept as the string)."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events
