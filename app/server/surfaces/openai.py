"""The OpenAI surface: models, chat completions, completions, embeddings, health."""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from app.core.errors import SwitchboardError
from app.core.routing.request import RouteRequest
from app.core.services import Job, Services
from app.server import errors
from app.server.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from app.server.surfaces import common
from app.server.surfaces.common import route_headers, route_request


def routes(services: Services) -> APIRouter:
    router = APIRouter()
    models = services.models

    @router.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": len(models.available()), "loaded": [m.model_id for m in models.loaded()]}

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [models.openai_object(e) for e in models.served()]}

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        return models.openai_object(models.enabled(model_id))

    @router.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        params = body.params()  # refuses a malformed conversation before anything is routed
        route = route_request(request, "chat", body)
        return await _generate(services, request, route, "chat", params, body.stream, body.include_usage)

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        route = route_request(request, "completion", body)
        return await _generate(services, request, route, "completion", body.params(), body.stream,
                               body.include_usage)

    @router.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        route = route_request(request, "embeddings", body)
        try:
            job = await services.open(route, "embeddings", {"input": body.input})
            result = [m async for m in job.stream()][-1]["result"]
        except SwitchboardError as exc:
            return errors.error_response(exc)
        headers = route_headers(job.decision)
        result["model"] = job.decision.model_id
        for item in result["data"]:
            if body.dimensions is not None:
                item["embedding"] = item["embedding"][: body.dimensions]
            if body.encoding_format == "base64":
                vector = item["embedding"]
                item["embedding"] = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return JSONResponse(result, headers=headers)

    return router


async def _generate(services: Services, request: Request, route: RouteRequest, op: str, params: dict[str, Any],
                    stream: bool, include_usage: bool) -> Response:
    response_id = f"{'chatcmpl' if op == 'chat' else 'cmpl'}-{request.state.request_id}"

    def streamed(job: Job) -> AsyncIterator[bytes]:
        return _sse(job.stream(), response_id, job.decision.model_id, include_usage)

    def whole(job: Job, chunks: list[dict[str, Any]], done: dict[str, Any]) -> dict[str, Any]:
        return _assemble(op, chunks, _usage(done.get("usage")), response_id, job.decision.model_id)

    return await common.answer(services, request, route, op, params, surface="openai", stream=stream, streamed=streamed,
                        whole=whole)


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
    logprobs: dict[str, list[Any]] | None = None  # each field's entries, in order (chat: "content")
    tool_calls: list[dict[str, Any]] = []
    for chunk in chunks:
        for choice in chunk.get("choices", ()):
            piece = choice.get("delta", {}).get("content") if op == "chat" else choice.get("text")
            if piece:
                parts.append(piece)
            for call in choice.get("delta", {}).get("tool_calls") or ():
                tool_calls.append({key: value for key, value in call.items() if key != "index"})
            if choice.get("logprobs"):
                logprobs = logprobs or {}
                for name, entries in choice["logprobs"].items():
                    logprobs.setdefault(name, []).extend(entries)
            finish_reason = choice.get("finish_reason") or finish_reason
    text = "".join(parts)
    created = int(time.time())
    if op == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": text or (None if tool_calls else "")}
        if tool_calls:
            message["tool_calls"] = tool_calls
        choice = {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": logprobs}
        return {"id": response_id, "object": "chat.completion", "created": created, "model": model,
                "choices": [choice], "usage": usage}
    choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}
    return {"id": response_id, "object": "text_completion", "created": created, "model": model,
            "choices": [choice], "usage": usage}


async def _sse(messages: AsyncIterator[dict[str, Any]], response_id: str, model: str,
               include_usage: bool) -> AsyncIterator[bytes]:
    """Server-sent events. The last content chunk is held back so it can carry the usage figures."""
    held: dict[str, Any] | None = None
    async with contextlib.aclosing(messages):  # type: ignore[type-var]
        try:
            message = await anext(messages)
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
