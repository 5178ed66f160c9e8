"""The OpenAI-compatible endpoints: models, chat completions, completions, embeddings, health."""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response, StreamingResponse

from app import __version__
from app.core.engine import Engine
from app.core.errors import ModelNotFound, SwitchboardError
from app.core.registry import ModelEntry
from app.core.router import RouteRequest, RoutingDecision
from app.server import errors
from app.server.guard import Guard
from app.server.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest


def create_app(engine: Engine) -> FastAPI:
    config = engine.config
    app = FastAPI(title="Switchboard", version=__version__, docs_url=None, redoc_url=None)
    errors.install(app)
    app.include_router(_routes(engine))
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-request-id", "x-switchboard-model",
                                                                "x-switchboard-route"])
    # Added last, so it runs first: nothing reaches a route without passing it.
    app.add_middleware(Guard, api_key=config.api_key, bind_host=config.host, allowed_hosts=config.allowed_hosts,
                       max_body_bytes=config.max_body_bytes)
    return app


def model_object(entry: ModelEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "object": "model",
        "created": int(entry.metadata.get("mtime") or 0),
        "owned_by": entry.source,
        "capabilities": entry.capabilities,
        "aliases": entry.aliases,
        "health": entry.health.value,
        "context_length": entry.metadata.get("context_length"),
        "quantization": entry.metadata.get("quantization"),
    }


def _routes(engine: Engine) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": len(engine.registry.available()),
                "loaded": [m.model_id for m in engine.pool.loaded()]}

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        entries = [e for e in engine.registry.list() if e.enabled and not e.missing]
        return {"object": "list", "data": [model_object(e) for e in entries]}

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        entry = engine.registry.get(model_id)
        if entry is None or not entry.enabled:
            raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")
        return model_object(entry)

    @router.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        decision = engine.route(RouteRequest("chat", body.model, tuple(body.capabilities or ())))
        return await _generate(engine, request, decision, "chat", body.params(), body.stream, body.include_usage)

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        decision = engine.route(RouteRequest("completion", body.model, tuple(body.capabilities or ())))
        return await _generate(engine, request, decision, "completion", body.params(), body.stream,
                               body.include_usage)

    @router.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> Response:
        decision = engine.route(RouteRequest("embeddings", body.model, tuple(body.capabilities or ())))
        headers = _route_headers(decision)
        try:
            async with contextlib.aclosing(engine.run(decision, "embeddings", {"input": body.input})) as messages:
                result = [m async for m in messages][-1]["result"]
        except SwitchboardError as exc:
            return errors.error_response(exc, headers)
        result["model"] = decision.model_id
        for item in result["data"]:
            if body.dimensions is not None:
                item["embedding"] = item["embedding"][: body.dimensions]
            if body.encoding_format == "base64":
                vector = item["embedding"]
                item["embedding"] = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return JSONResponse(result, headers=headers)

    return router


def _route_headers(decision: RoutingDecision) -> dict[str, str]:
    reason = f"{decision.strategy}; {decision.reason}"
    return {"x-switchboard-model": decision.model_id,
            "x-switchboard-route": reason.encode("latin-1", "replace").decode("latin-1")}


async def _generate(engine: Engine, request: Request, decision: RoutingDecision, op: str, params: dict[str, Any],
                    stream: bool, include_usage: bool) -> Response:
    headers = _route_headers(decision)
    request_id: str = request.state.request_id
    prefix = "chatcmpl" if op == "chat" else "cmpl"
    response_id = f"{prefix}-{request_id}"
    messages = engine.run(decision, op, params)
    try:
        # Wait for the first message: a model that cannot load gets a real HTTP error, not a broken stream.
        first = await anext(messages)
    except SwitchboardError as exc:
        await messages.aclose()
        return errors.error_response(exc, headers)
    if stream:
        events = _sse(messages, first, response_id, decision.model_id, include_usage)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache"})
    try:
        async with contextlib.aclosing(messages):
            chunks, usage = await _collect(first, messages)
    except SwitchboardError as exc:
        return errors.error_response(exc, headers)
    body = _assemble(op, chunks, usage, response_id, decision.model_id)
    return JSONResponse(body, headers=headers)


async def _collect(first: dict[str, Any], messages: AsyncIterator[dict[str, Any]]) -> tuple[list[dict], dict | None]:
    chunks: list[dict[str, Any]] = []
    message = first
    while message["type"] == "chunk":
        chunks.append(message["data"])
        message = await anext(messages)
    return chunks, _usage(message.get("usage"))


def _usage(raw: dict[str, int] | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    return {
        "prompt_tokens": raw["prompt_tokens"],
        "completion_tokens": raw["completion_tokens"],
        "total_tokens": raw["total_tokens"],
        # OpenAI's field for prompt tokens served from cache: here, reused llama.cpp state.
        "prompt_tokens_details": {"cached_tokens": raw["cached_tokens"]},
    }


def _assemble(op: str, chunks: list[dict[str, Any]], usage: dict | None, response_id: str, model: str) -> dict:
    finish_reason = None
    parts: list[str] = []
    for chunk in chunks:
        for choice in chunk.get("choices", ()):
            piece = choice.get("delta", {}).get("content") if op == "chat" else choice.get("text")
            if piece:
                parts.append(piece)
            finish_reason = choice.get("finish_reason") or finish_reason
    text = "".join(parts)
    created = int(time.time())
    if op == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
                  "logprobs": None}
        return {"id": response_id, "object": "chat.completion", "created": created, "model": model,
                "choices": [choice], "usage": usage}
    choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
    return {"id": response_id, "object": "text_completion", "created": created, "model": model,
            "choices": [choice], "usage": usage}


async def _sse(messages: AsyncIterator[dict[str, Any]], first: dict[str, Any], response_id: str, model: str,
               include_usage: bool) -> AsyncIterator[bytes]:
    """Server-sent events. The last content chunk is held back so it can carry the usage figures."""
    held: dict[str, Any] | None = None
    async with contextlib.aclosing(messages):  # type: ignore[type-var]
        try:
            message = first
            while message["type"] == "chunk":
                chunk = message["data"]
                chunk["id"], chunk["model"] = response_id, model
                if held is not None:
                    yield _event(held)
                held = chunk
                message = await anext(messages)
            usage = _usage(message.get("usage"))
            if held is not None:
                if not include_usage:
                    held["usage"] = usage
                yield _event(held)
            if include_usage:
                yield _event({"id": response_id, "object": held["object"] if held else "chat.completion.chunk",
                              "created": int(time.time()), "model": model, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"
        except SwitchboardError as exc:
            if held is not None:
                yield _event(held)
            yield errors.sse_error(exc)


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
