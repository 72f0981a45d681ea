"""Property-based requests generated from our own OpenAPI schema: no input may produce a 5xx.

Bounded so it stays quick: a few dozen examples per operation, and any valid token budget is cut
to a handful of tokens (a value past the session length is kept: it must still be a 400).
"""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from tests.serve.helpers import SESSION_LEN  # noqa: E402

_BUDGET_FIELDS = ("max_tokens", "max_completion_tokens", "request_output_len")


@pytest.fixture(scope="session")
def api_schema(server):
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


def _bound(path: str, body):
    """Keep generated requests cheap without hiding what makes them invalid."""
    if not isinstance(body, dict):
        return body
    body = dict(body)

    def small(name: str, most: int, keep_above: int | None = None):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and most < value and \
                (keep_above is None or value <= keep_above):
            body[name] = most
    for name in _BUDGET_FIELDS:
        small(name, 4, keep_above=SESSION_LEN)
    if all(body.get(name) is None for name in _BUDGET_FIELDS):   # absent or null: the whole session
        body["request_output_len" if path.endswith("interactive") else "max_tokens"] = 4
    small("min_new_tokens", 4)
    small("min_tokens", 4)
    small("n", 2)
    if isinstance(body.get("prompt"), list) and len(body["prompt"]) > 4 and \
            all(isinstance(p, (str, list)) for p in body["prompt"]):
        body["prompt"] = body["prompt"][:4]
    return body


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_gives_a_server_error(case):
    if case.body is not None and not isinstance(case.body, (str, bytes)):
        case.body = _bound(case.path, case.body)
    response = case.call(timeout=120)
    assert response.status_code < 500, f"{case.method} {case.path} {case.body!r} -> {response.status_code}: " \
                                       f"{response.text[:500]}"
    if 400 <= response.status_code < 500 and response.status_code != 405:
        error = response.json()["error"]
        assert error["message"] and error["type"]

