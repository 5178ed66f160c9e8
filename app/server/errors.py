"""The one place where errors become HTTP responses, each in the error shape of the API surface it came through:
OpenAI's envelope by default, Anthropic's on /v1/messages, Ollama's on Ollama's paths."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from app.core import errors
from app.core.keys import OLLAMA_INFERENCE_PATHS

log = logging.getLogger(__name__)

# Most specific class first: the first match wins.
STATUS: tuple[tuple[type[errors.SwitchboardError], int, str], ...] = (
    (errors.InvalidRequest, 400, "invalid_request_error"),
    (errors.Unauthorized, 401, "authentication_error"),
    (errors.Forbidden, 403, "permission_error"),
    (errors.ModelNotFound, 404, "invalid_request_error"),
    (errors.CapabilityMissing, 404, "invalid_request_error"),
    (errors.PayloadTooLarge, 413, "invalid_request_error"),
    (errors.HeadersTooLarge, 431, "invalid_request_error"),
    (errors.QuotaExceeded, 429, "rate_limit_error"),
    (errors.QueueFull, 429, "rate_limit_error"),
    (errors.ModelUnavailable, 503, "server_error"),
    (errors.RequestTimeout, 504, "server_error"),
    (errors.SwitchboardError, 500, "server_error"),
)


# Anthropic's error types by status (its SDK raises a class per type).
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    503: "overloaded_error"}


def surface_of(path: str) -> str:
    """Which API surface a path belongs to, for its error shape."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    if path in OLLAMA_INFERENCE_PATHS:
        return "ollama"
    return "openai"


def envelope(message: str, type_: str, *, param: str | None = None, code: str | None = None,
             status: int = 400, surface: str = "openai") -> dict[str, Any]:
    """An error body in the surface's shape (OpenAI's `type` names the kind; the others derive it from status)."""
    if surface == "anthropic":
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    if surface == "ollama":
        return {"error": message}
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def describe(exc: errors.SwitchboardError, surface: str = "openai") -> tuple[int, dict[str, Any]]:
    for cls, status, type_ in STATUS:
        if isinstance(exc, cls):
            return status, envelope(exc.message, type_, param=exc.param, code=exc.code, status=status,
                                    surface=surface)
    raise AssertionError("unreachable: SwitchboardError is in the table")


def error_response(exc: errors.SwitchboardError, headers: dict[str, str] | None = None, *,
                   surface: str = "openai") -> JSONResponse:
    status, body = describe(exc, surface)
    if exc.retry_after is not None:
        headers = {**(headers or {}), "retry-after": str(max(1, math.ceil(exc.retry_after)))}
    return JSONResponse(body, status_code=status, headers=headers)


def sse_error(exc: errors.SwitchboardError) -> bytes:
    """An error event inside an already started OpenAI stream (the HTTP status was sent with the first byte)."""
    return b"data: " + json.dumps(describe(exc)[1]).encode() + b"\n\n"


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return f"The request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    field = ".".join(loc) or None
    if field is None:
        return f"Invalid request body: {first.get('msg')}", None
    if first.get("type") == "missing":
        return f"Missing required parameter: '{field}'", field
    return f"Invalid value for '{field}': {first.get('msg')}", field


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.SwitchboardError)
    async def _switchboard(request: Request, exc: errors.SwitchboardError) -> JSONResponse:
        return error_response(exc, surface=surface_of(request.url.path))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # Only the core's own errors are the client's fault; anything else is a bug of ours, logged in full.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(envelope("Internal server error; the server log has the details", "server_error",
                                     code="internal_error", status=500, surface=surface_of(request.url.path)), 500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = _validation_message(exc)
        return JSONResponse(envelope(message, "invalid_request_error", param=field, code="invalid_value",
                                     surface=surface_of(request.url.path)), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        # Its headers are part of the answer: a 405 must say which methods are allowed (RFC 9110).
        return JSONResponse(envelope(str(exc.detail), type_, status=exc.status_code,
                                     surface=surface_of(request.url.path)), exc.status_code, headers=exc.headers)
