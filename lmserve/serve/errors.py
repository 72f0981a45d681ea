"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}`, for every failure.

OpenAI's SDKs read `error.message` into their exceptions, so each message names the field and the
problem. Bad input is a 4xx; a 500 means a bug of ours and is logged with its traceback.
"""
from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error", 503: "service_unavailable"}


class APIError(Exception):
    """An answer other than 200, raised anywhere in a handler."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "internal_error")

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(error: APIError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def sse_error(error: APIError) -> str:
    """An error in the middle of a stream, where the status line has already gone out."""
    return f"data: {json.dumps(error.body())}\n\n"


_TYPE_LABELS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _field_path(loc) -> str:
    # Union members appear in pydantic's path as labels ("list[int]", "function-after[...]"); a
    # client knows only field names and indexes.
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and ("[" in p or p in _TYPE_LABELS))]
    return ".".join(parts)


def validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    if not errors:
        return bad_request("invalid request")
    first = errors[0]
    if first["type"] == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return bad_request(f"the request body is not valid JSON ({detail})", code="json_invalid")
    if first["type"] == "missing" and tuple(first["loc"]) == ("body",):
        return bad_request("the request needs a JSON body", code="missing_body")
    # A union field (prompt, stop, content) fails once per alternative. Our own checks (value_error)
    # say more than "not a list" from the alternative the client did not mean; report one per field.
    chosen: dict[str, dict] = {}
    for err in errors:
        top = _field_path(err["loc"]).split(".")[0]
        if top not in chosen or (err["type"] == "value_error" and chosen[top]["type"] != "value_error"):
            chosen[top] = err
    shown = [f"{_field_path(e['loc']) or 'body'}: {e['msg']}" for e in chosen.values()]
    lead = next(iter(chosen.values()))
    param = _field_path(lead["loc"]).split(".")[0] or None
    return bad_request("invalid request: " + "; ".join(shown[:3]), param=param, code=lead["type"])


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(APIError(exc.status_code, message), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(APIError(500, f"internal server error: {type(exc).__name__}: {exc}",
                                       type="internal_error"))
