"""Ollama's API (/api/...): what Ollama's own clients (Open WebUI, VS Code's Copilot, Raycast, Obsidian's plugins)
call to list, describe, run and embed with models.

A chat or generate request becomes the internal chat request (a raw generate a completion), its answer Ollama's
objects: streamed as NDJSON by default, one object with `stream: false`, the last carrying `done`, `done_reason`,
the token counts and the timings in nanoseconds. `keep_alive` is Ollama's: how long the model stays loaded after
the request (0 unloads it, a negative one keeps it). Errors are Ollama's `{"error": "..."}`.

Long module: Ollama's request fields, their translation both ways and its model descriptions are one API's
adapter; split, each part would only be read beside the others.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import math
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import JSONResponse, PlainTextResponse, Response

from app.core.catalog import capabilities as caps
from app.core.catalog.gguf.header import ArrayInfo, GGUFHeader
from app.core.catalog.model import ModelEntry, file_state
from app.core.errors import InvalidRequest, SwitchboardError
from app.core.job import Job
from app.core.runtime.placement import context_for
from app.core.services import Services
from app.server import errors, schemas
from app.server.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from app.server.surfaces import common
from app.server.surfaces.common import route_request

if TYPE_CHECKING:
    from app.core.runtime.pool import LoadedModel

SURFACE = "ollama"
# The Ollama release whose API this follows: clients gate features on it (VS Code's Copilot wants 0.6.4 or later).
VERSION = "0.12.6"
# Go's longest duration, what Ollama counts a model kept loaded for ever as staying (about 292 years).
FOREVER_S = (2**63 - 1) / 1e9

Piece = Callable[[str, list[dict[str, Any]]], dict[str, Any]]  # text and tool calls -> the endpoint's fields
_Body = TypeVar("_Body", bound=BaseModel)


# -- requests ---------------------------------------------------------------------------------

_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value: float | str | None) -> float | None:
    """Ollama's keep_alive in seconds: a number of seconds or a Go duration ("5m", "1h30m"); negative: for ever
    (math.inf). ValueError for anything else."""
    if isinstance(value, str):
        text = value.strip()
        seconds = float(text) if _NUMBER.fullmatch(text) else _go_duration(text)
    elif value is None:
        return None
    else:
        seconds = float(value)
    if math.isnan(seconds):
        raise ValueError("keep_alive must be a duration such as \"5m\" or a number of seconds")
    return seconds if seconds >= 0 else math.inf


def _go_duration(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.removeprefix("-") if sign < 0 else text.removeprefix("+")
    parts = _DURATION.findall(body)
    if not body or "".join(number + unit for number, unit in parts) != body:
        raise ValueError(f"{text!r} is not a duration such as \"5m\", \"1h30m\" or \"300s\"")
    return sign * sum(float(number) * _UNIT_S[unit] for number, unit in parts)


class _KeepAlive(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    keep_alive: float | None = None

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        if not isinstance(value, int | float | str | None) or isinstance(value, bool):
            raise ValueError("keep_alive must be a duration such as \"5m\" or a number of seconds")
        return keep_alive_seconds(value)


class Options(BaseModel):
    """Sampling options. Ollama's load options (num_gpu, num_thread, num_batch, ...) are the server's settings
    here, so they are ignored, as unknown fields are."""

    model_config = ConfigDict(extra="allow")

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = None
    num_predict: int | None = Field(default=None, ge=-2)  # -1: no limit; -2: until the context is full
    stop: list[str] | None = Field(default=None, max_length=4)
    repeat_penalty: float | None = Field(default=None, gt=0.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    num_ctx: int | None = Field(default=None, ge=1)


class _Run(_KeepAlive):
    format: str | dict[str, Any] | None = None
    options: Options | None = None
    stream: bool = True


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    function: ToolFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class ChatBody(_Run):
    messages: list[ChatMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    # Switchboard's extension (Ollama lets the model decide): OpenAI's "auto", "none", "required" or a function.
    tool_choice: str | dict[str, Any] | None = None


class GenerateBody(_Run):
    prompt: str = ""
    system: str | None = None
    images: list[str] | None = None
    raw: bool = False
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None


class EmbedBody(_KeepAlive):
    input: str | list[str]
    dimensions: int | None = Field(default=None, ge=1)


class EmbeddingsBody(_KeepAlive):
    prompt: str = ""


class ShowBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    name: str | None = None  # what older clients send


def _sampling(options: Options | None) -> dict[str, Any]:
    """The chat body's fields of Ollama's options (num_predict below 1 is no limit, as Ollama's -1 and -2)."""
    if options is None:
        return {}
    names = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "stop")
    chosen = {name: getattr(options, name) for name in names}
    if options.num_predict is not None and options.num_predict > 0:
        chosen["max_tokens"] = options.num_predict
    return chosen


def _llama_samplers(options: Options | None) -> dict[str, Any]:
    """The worker's samplers beyond OpenAI's, straight into its params."""
    names = ("top_k", "min_p", "repeat_penalty")
    return {name: getattr(options, name) for name in names if options and getattr(options, name) is not None}


def _response_format(format_: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if format_ in (None, ""):
        return None
    if format_ == "json":
        return {"type": "json_object"}
    if isinstance(format_, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": format_}}
    raise InvalidRequest(f"format must be \"json\" or a JSON schema, not {format_!r}", param="format")


_IMAGE_MAGIC = ((b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF8", "gif"), (b"RIFF", "webp"))


def _image_url(image: str, where: str) -> dict[str, Any]:
    """A base64 image as an OpenAI image_url part (a data: URI of its sniffed type)."""
    try:
        data = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{where} is not base64-encoded image data", param=where) from None
    kind = next((name for magic, name in _IMAGE_MAGIC if data.startswith(magic)), None)
    if kind is None:
        raise InvalidRequest(f"{where} is not a PNG, JPEG, GIF or WebP image", param=where)
    return {"type": "image_url", "image_url": {"url": f"data:image/{kind};base64,{image}"}}


def _content(text: str, images: list[str] | None, where: str) -> str | list[dict[str, Any]]:
    """A message's content: its text, or text and image parts (`where` names the images field)."""
    if not images:
        return text
    parts = [{"type": "text", "text": text}] if text else []
    return parts + [_image_url(image, f"{where}[{i}]") for i, image in enumerate(images)]


def _messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Ollama's messages as OpenAI's: images as image_url parts, tool calls with ids and arguments as JSON text,
    and each tool result tied to the call it answers: by its id, else the tool's name, else in order (Ollama's
    clients send no ids)."""
    converted: list[dict[str, Any]] = []
    unanswered: list[tuple[str, str]] = []  # (id, name) of the last assistant turn's calls
    for index, message in enumerate(messages):
        out: dict[str, Any] = {"role": message.role,
                               "content": _content(message.content, message.images, f"messages[{index}].images")}
        if message.tool_calls:
            out["tool_calls"] = [_openai_call(call, f"call_{index}_{i}") for i, call in enumerate(message.tool_calls)]
            unanswered = [(call["id"], call["function"]["name"]) for call in out["tool_calls"]]
        if message.role == "tool":
            out["tool_call_id"] = _answered(message, unanswered, f"call_{index}")
            if message.tool_name:
                out["name"] = message.tool_name
        converted.append(out)
    return converted


def _openai_call(call: ToolCall, default_id: str) -> dict[str, Any]:
    arguments = call.function.arguments
    return {"id": call.id or default_id, "type": "function",
            "function": {"name": call.function.name,
                         "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}}


def _answered(message: ChatMessage, unanswered: list[tuple[str, str]], default_id: str) -> str:
    """The id of the call a tool message answers, taken off `unanswered`."""
    for position, (call_id, name) in enumerate(unanswered):
        if message.tool_call_id in (None, call_id) and message.tool_name in (None, name):
            del unanswered[position]
            return call_id
    return message.tool_call_id or default_id


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Ollama's tools are OpenAI's: each a function with a name."""
    for index, tool in enumerate(tools or ()):
        function = tool.get("function")
        if tool.get("type", "function") != "function" or not isinstance(function, dict) \
                or not isinstance(function.get("name"), str):
            raise InvalidRequest(f"tools[{index}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., "
                                 "\"parameters\": ...}}", param=f"tools[{index}]")
    return [{**tool, "type": "function"} for tool in tools] if tools else None


def _chat(body: _Run, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
          tool_choice: str | dict[str, Any] | None = None) -> tuple[ChatCompletionRequest, dict[str, Any]]:
    """The internal chat request and the worker's params of an Ollama chat (or of a templated generate)."""
    chat = schemas.internal(ChatCompletionRequest, {
        "model": body.model, "messages": messages, **_sampling(body.options), "tools": _tools(tools),
        "tool_choice": tool_choice, "response_format": _response_format(body.format)})
    return chat, {**chat.params(), **_llama_samplers(body.options)}


def _completion(body: GenerateBody) -> tuple[CompletionRequest, dict[str, Any]]:
    """A raw generate: the prompt as it is, no chat template."""
    if body.images or body.format:
        field = "images" if body.images else "format"
        raise InvalidRequest(f"{field} needs raw: false (a raw prompt is continued as text)", param=field)
    # CompletionRequest stops at 16 tokens by default (OpenAI's); Ollama's generate has no limit.
    completion = schemas.internal(CompletionRequest, {"model": body.model, "prompt": body.prompt, "max_tokens": None,
                                                **_sampling(body.options)})
    return completion, {**completion.params(), **_llama_samplers(body.options)}


def _refuse_unsupported(body: GenerateBody) -> None:
    if body.suffix:
        raise InvalidRequest("suffix (fill in the middle) is not supported: no model here runs an insert template",
                             param="suffix")
    if body.template:
        raise InvalidRequest("template is not supported: each model uses the chat template of its GGUF file",
                             param="template")
    if body.context:
        raise InvalidRequest("context (an earlier answer's token ids) is not supported: send the conversation to "
                             "/api/chat instead", param="context")


def _context_length(services: Services, entry: ModelEntry) -> int | None:
    """The context a request gets on the model: as it is loaded here, or as a remote backend advertises it."""
    trained = entry.metadata.get("context_length")
    return trained if entry.is_remote else context_for(entry.metadata, services.config.n_ctx)


def _check_context(services: Services, body: _Run) -> None:
    """num_ctx up to the loaded context is what the request gets anyway; more would need the model reloaded."""
    wanted = body.options.num_ctx if body.options else None
    entry = services.models.get(body.model) if wanted else None
    loaded = _context_length(services, entry) if entry is not None else None
    if wanted and entry is not None and loaded and wanted > loaded:
        trained = entry.metadata.get("context_length")
        raise InvalidRequest(
            f"options.num_ctx {wanted} is more than the {loaded} tokens of context '{entry.id}' is loaded with: "
            f"the server's n_ctx setting ({services.config.n_ctx}) sets it, up to the model's trained context "
            f"({trained or 'unknown'})", param="options.num_ctx", code="context_length_exceeded")


# -- answers ----------------------------------------------------------------------------------

def _timestamp(seconds: float | None = None) -> str:
    moment = datetime.now(UTC) if seconds is None else datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat().replace("+00:00", "Z")


def _line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


def _chat_piece(text: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return {"message": message}


def _generate_piece(text: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    return {"response": text}


def _ollama_call(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call as Ollama sends it: arguments an object (JSON text that is not one is passed as is)."""
    function = call.get("function") or {}
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except json.JSONDecodeError:
        arguments = function.get("arguments")
    return {"id": call.get("id"), "function": {"index": call.get("index", 0), "name": function.get("name"),
                                               "arguments": arguments}}


class _Answer:
    """Ollama's objects of one answer: one per chunk with text or tool calls, then the last, with `done`."""

    def __init__(self, model: str, piece: Piece, started: float) -> None:
        self.model = model
        self.piece = piece
        self.started = started
        self.first = time.monotonic()  # made when the first message has arrived: the prompt has been evaluated
        self.finish_reason: str | None = None

    def feed(self, chunk: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        """The text and tool calls of one chunk."""
        text, calls = "", []
        for choice in chunk.get("choices", ()):
            delta = choice.get("delta") or {}
            text += delta.get("content") or choice.get("text") or ""
            calls += [_ollama_call(call) for call in delta.get("tool_calls") or ()]
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        return text, calls

    def object(self, text: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
        return {"model": self.model, "created_at": _timestamp(), **self.piece(text, calls), "done": False}

    def done(self, usage: dict[str, int] | None, text: str = "", calls: list[dict[str, Any]] | None = None,
             ) -> dict[str, Any]:
        """The last object. The worker reports no load time of its own: the wait for the first token (a load
        included) is the prompt's evaluation."""
        end = time.monotonic()
        usage = usage or {}
        return {**self.object(text, calls or []), "done": True,
                # Ollama's reason for a turn that ends in tool calls is "stop" too.
                "done_reason": "length" if self.finish_reason == "length" else "stop",
                "total_duration": _ns(end - self.started), "load_duration": 0,
                "prompt_eval_count": usage.get("prompt_tokens", 0),
                "prompt_eval_duration": _ns(self.first - self.started),
                "eval_count": usage.get("completion_tokens", 0), "eval_duration": _ns(end - self.first)}


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


async def _keep_alive(services: Services, model_id: str, seconds: float | None) -> None:
    if seconds is not None:
        await services.models.keep_alive(model_id, seconds)


async def _run(services: Services, request: Request, body: _Run, op: str, internal: BaseModel,
               params: dict[str, Any], piece: Piece) -> Response:
    started = time.monotonic()
    _check_context(services, body)
    route = route_request(request, op, internal, surface=SURFACE)

    def streamed(job: Job) -> AsyncIterator[bytes]:
        return _ndjson(services, job, _Answer(job.decision.model_id, piece, started), body.keep_alive)

    def whole(job: Job, chunks: list[dict[str, Any]], done: dict[str, Any]) -> dict[str, Any]:
        answer = _Answer(job.decision.model_id, piece, started)
        fed = [answer.feed(chunk) for chunk in chunks]
        text = "".join(part for part, _ in fed)
        return answer.done(done.get("usage"), text, [call for _, calls in fed for call in calls])

    async def keep_alive(job: Job) -> None:
        await _keep_alive(services, job.decision.model_id, body.keep_alive)

    return await common.answer(services, request, route, op, params, surface=SURFACE, stream=body.stream,
                               streamed=streamed, whole=whole, media_type="application/x-ndjson",
                               after_whole=keep_alive)


async def _ndjson(services: Services, job: Job, answer: _Answer, keep_alive: float | None) -> AsyncIterator[bytes]:
    try:
        async with contextlib.aclosing(job.stream()) as messages:  # type: ignore[type-var]
            async for message in messages:
                if message["type"] == "chunk":
                    text, calls = answer.feed(message["data"])
                    if text or calls:
                        yield _line(answer.object(text, calls))
                else:
                    yield _line(answer.done(message.get("usage")))
    except SwitchboardError as exc:
        yield _line(errors.describe(exc, SURFACE)[1])
    finally:
        # Recorded before its first await, so a client that hangs up still leaves the keep-alive set.
        await _keep_alive(services, job.decision.model_id, keep_alive)


async def _load_or_unload(services: Services, body: _KeepAlive, piece: Piece) -> dict[str, Any]:
    """A request with nothing to answer, as Ollama's clients preload a model (`ollama stop` sends keep_alive 0)."""
    entry = services.models.enabled(body.model)
    if body.keep_alive == 0:
        await services.models.unload(entry.id)
    else:
        await services.models.load(entry.id)
        await _keep_alive(services, entry.id, body.keep_alive)
    return {"model": entry.id, "created_at": _timestamp(), **piece("", []), "done": True,
            "done_reason": "unload" if body.keep_alive == 0 else "load"}


async def _embeddings(services: Services, request: Request, body: _KeepAlive,
                      inputs: list[str]) -> tuple[list[list[float]], int, str]:
    """The vectors, the prompt tokens and the model that made them."""
    internal = schemas.internal(EmbeddingRequest, {"model": body.model, "input": inputs})
    route = route_request(request, "embeddings", internal, surface=SURFACE)
    job = await services.open(route, "embeddings", {"input": inputs})
    try:
        result = [message async for message in job.stream()][-1]["result"]
    finally:
        await _keep_alive(services, job.decision.model_id, body.keep_alive)
    return [item["embedding"] for item in result["data"]], result["usage"]["prompt_tokens"], job.decision.model_id


def _unit(vector: list[float]) -> list[float]:
    array = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(array))
    return (array / norm).tolist() if norm else array.tolist()


# -- models -----------------------------------------------------------------------------------

_CAPABILITIES = {caps.CHAT: "completion", caps.COMPLETION: "completion", caps.TOOLS: "tools",
                 caps.VISION: "vision", caps.EMBEDDINGS: "embedding"}
_BLOB = re.compile(r"sha256-([0-9a-f]{64})")


def _file_facts(entry: ModelEntry) -> tuple[str, str]:
    """Its modified_at and digest (blocking: stats its files). Ollama's digest is the file's sha256, which names
    the files of Ollama's own store; any other file gets a digest of its id, size and mtime (hashing gigabytes
    for a listing would take minutes), which changes when the file does."""
    size, mtime_ns = file_state(entry.parts)
    blob = _BLOB.fullmatch(os.path.basename(entry.path))
    digest = blob[1] if blob else hashlib.sha256(f"{entry.id}\0{size}\0{mtime_ns}".encode()).hexdigest()
    return _timestamp(mtime_ns / 1e9), digest


def _details(entry: ModelEntry) -> dict[str, Any]:
    meta = entry.metadata
    family = meta.get("architecture") or ""
    return {"parent_model": "", "format": "" if entry.is_remote else "gguf", "family": family,
            "families": [family] if family else None, "parameter_size": meta.get("size_label") or "",
            "quantization_level": meta.get("quantization") or ""}


def _capabilities(entry: ModelEntry) -> list[str]:
    return list(dict.fromkeys(_CAPABILITIES[c] for c in entry.capabilities if c in _CAPABILITIES))


def _model_info(header: GGUFHeader | None) -> dict[str, Any]:
    """The header's metadata keyed as in the file, as Ollama shows it: the chat template apart, arrays too long to
    keep (the vocabulary) empty, and the parameter count even where the file does not state it."""
    if header is None:
        return {}
    info = {key: [] if isinstance(value, ArrayInfo) else value for key, value in header.metadata.items()
            if key != "tokenizer.chat_template"}
    if header.parameter_count:
        info.setdefault("general.parameter_count", header.parameter_count)
    return info


def routes(services: Services) -> APIRouter:
    router = APIRouter()
    models = services.models

    @router.get("/", response_class=PlainTextResponse)
    async def root() -> str:
        return "Ollama is running"  # what Ollama's clients check a server by

    @router.get("/api/version")
    async def version() -> dict[str, Any]:
        return {"version": VERSION}

    @router.get("/api/tags")
    async def tags() -> dict[str, Any]:
        entries = models.served()
        facts = await asyncio.to_thread(lambda: [_file_facts(e) for e in entries])
        return {"models": [{"name": e.id, "model": e.id, "modified_at": modified, "size": e.size, "digest": digest,
                            "details": _details(e)} for e, (modified, digest) in zip(entries, facts)]}

    @router.post("/api/show")
    async def show(body: ShowBody) -> dict[str, Any]:
        if not (body.model or body.name):
            raise InvalidRequest("Missing required parameter: 'model'", param="model")
        entry = models.enabled(body.model or body.name or "")
        header = await models.header(entry.id)
        modified, _ = await asyncio.to_thread(_file_facts, entry)
        template = (header.chat_template if header else None) or ""
        context = _context_length(services, entry)
        parameters = f"num_ctx {context}" if context else ""
        modelfile = f"# Served by Switchboard\nFROM {entry.path}\n"
        modelfile += f'TEMPLATE """{template}"""\n' if template else ""
        modelfile += f"PARAMETER {parameters}\n" if parameters else ""
        shown = {"modelfile": modelfile, "parameters": parameters, "template": template, "details": _details(entry),
                 "model_info": _model_info(header), "capabilities": _capabilities(entry), "modified_at": modified}
        license_ = header.metadata.get("general.license") if header else None
        return {**shown, "license": license_} if isinstance(license_, str) else shown

    @router.get("/api/ps")
    async def ps() -> dict[str, Any]:
        workers: dict[str, list[LoadedModel]] = {}
        for worker in models.loaded():
            workers.setdefault(worker.model_id, []).append(worker)
        entries = [e for e in map(models.get, workers) if e is not None and not e.is_remote]
        facts = await asyncio.to_thread(lambda: [_file_facts(e) for e in entries])
        now = time.time()
        running = []
        for entry, (_, digest) in zip(entries, facts):
            mine = workers[entry.id]
            vram = sum(w.vram_bytes for w in mine)
            expires = min(FOREVER_S, max(w.expires_in_s for w in mine))
            running.append({"name": entry.id, "model": entry.id, "size": sum(w.estimate_bytes for w in mine) + vram,
                            "size_vram": vram, "digest": digest, "details": _details(entry),
                            "expires_at": _timestamp(now + expires),
                            "context_length": _context_length(services, entry)})
        return {"models": running}

    @router.post("/api/chat")
    async def chat(body: ChatBody, request: Request) -> Response:
        if not body.messages:
            return JSONResponse(await _load_or_unload(services, body, _chat_piece))
        internal, params = _chat(body, _messages(body.messages), body.tools, body.tool_choice)
        return await _run(services, request, body, "chat", internal, params, _chat_piece)

    @router.post("/api/generate")
    async def generate(body: GenerateBody, request: Request) -> Response:
        _refuse_unsupported(body)
        if not body.prompt and not body.images:
            return JSONResponse(await _load_or_unload(services, body, _generate_piece))
        if body.raw:
            completion, params = _completion(body)
            return await _run(services, request, body, "completion", completion, params, _generate_piece)
        system = [{"role": "system", "content": body.system}] if body.system else []
        user = {"role": "user", "content": _content(body.prompt, body.images, "images")}
        internal, params = _chat(body, [*system, user])
        return await _run(services, request, body, "chat", internal, params, _generate_piece)

    @router.post("/api/embed")
    async def embed(body: EmbedBody, request: Request) -> dict[str, Any]:
        started = time.monotonic()
        inputs = [body.input] if isinstance(body.input, str) else body.input
        if not inputs or body.input == "":
            return {"model": body.model, "embeddings": []}  # Ollama's answer to nothing to embed
        vectors, tokens, model = await _embeddings(services, request, body, inputs)
        # Ollama's /api/embed returns unit vectors (cut to `dimensions` first).
        embeddings = [_unit(vector[: body.dimensions]) for vector in vectors]
        return {"model": model, "embeddings": embeddings, "total_duration": _ns(time.monotonic() - started),
                "load_duration": 0, "prompt_eval_count": tokens}

    @router.post("/api/embeddings")
    async def embeddings(body: EmbeddingsBody, request: Request) -> dict[str, Any]:
        if not body.prompt:
            return {"embedding": []}  # as Ollama answers an empty prompt
        vectors, _, _ = await _embeddings(services, request, body, [body.prompt])
        return {"embedding": vectors[0]}  # the older endpoint's vectors are not normalized

    return router
