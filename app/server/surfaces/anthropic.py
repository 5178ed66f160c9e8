"""The Anthropic Messages surface: /v1/messages, streamed or not, and /v1/messages/count_tokens, as Anthropic's API
defines them (Claude Code speaks it through ANTHROPIC_BASE_URL).

A Messages request becomes the internal chat request: the system prompt a system message, content blocks OpenAI
content parts, tool_use blocks the assistant's tool_calls and tool_result blocks tool messages. The answer's OpenAI
chunks become content blocks (text, tool_use) and Anthropic's stream events.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.responses import JSONResponse, Response

from app.core.errors import InvalidRequest, SwitchboardError
from app.core.services import Job, Services
from app.server import errors, schemas
from app.server.schemas import ChatCompletionRequest
from app.server.surfaces import common
from app.server.surfaces.common import route_headers, route_request

SURFACE = "anthropic"

# -- requests ---------------------------------------------------------------------------------
# Unknown fields (thinking, service_tier, cache_control on any block, ...) are accepted and ignored.


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any]

    def openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name, "parameters": self.input_schema}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False

    @model_validator(mode="after")
    def _named(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("a tool_choice of type 'tool' needs the tool's 'name'")
        return self

    def openai(self) -> str | dict[str, Any]:
        if self.type == "tool":
            return {"type": "function", "function": {"name": self.name}}
        return {"auto": "auto", "any": "required", "none": "none"}[self.type]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    user_id: str | None = None


class Conversation(BaseModel):
    """What count_tokens reads: the conversation and the tools offered."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None

    def internal(self) -> tuple[ChatCompletionRequest, dict[str, Any]]:
        """The internal chat request and the worker's params; InvalidRequest names the field at fault."""
        return self._internal({})

    def _internal(self, sampling: dict[str, Any]) -> tuple[ChatCompletionRequest, dict[str, Any]]:
        chat = schemas.internal(ChatCompletionRequest, {
            "model": self.model, "messages": _openai_messages(self.system, self.messages),
            "tools": [tool.openai() for tool in self.tools] if self.tools else None,
            "tool_choice": self.tool_choice.openai() if self.tool_choice else None, **sampling})
        params = chat.params()
        if self.tool_choice and self.tool_choice.disable_parallel_tool_use:
            params["parallel_tool_calls"] = False
        return chat, params


class MessagesRequest(Conversation):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    metadata: Metadata | None = None
    stream: bool = False

    @field_validator("stop_sequences")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value and not all(value):
            raise ValueError("stop sequences must not be empty")
        return value

    def internal(self) -> tuple[ChatCompletionRequest, dict[str, Any]]:
        sampling = {"temperature": self.temperature, "top_p": self.top_p,
                    "user": self.metadata.user_id if self.metadata else None}
        chat, params = self._internal({k: v for k, v in sampling.items() if v is not None})
        # A ceiling, not a need: every client must send max_tokens (Claude Code sends 32000), so the router is not
        # told it (the prompt alone must fit) and the worker stops at the end of the context (stop_reason max_tokens).
        params["max_tokens"] = self.max_tokens
        if self.top_k is not None:
            params["top_k"] = self.top_k
        if self.stop_sequences:
            params["stop"] = self.stop_sequences
        return chat, params


def _openai_messages(system: str | list[dict[str, Any]] | None, messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if system:
        text = system if isinstance(system, str) else "\n".join(
            _text(block, f"system[{i}]") for i, block in enumerate(system))
        out.append({"role": "system", "content": text})
    for i, message in enumerate(messages):
        where = f"messages[{i}].content"
        if isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
        elif message.role == "user":
            out.extend(_user(message.content, where))
        else:
            out.append(_assistant(message.content, where))
    return out


def _user(blocks: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as tool messages (they answer the turn before), the blocks around them as user
    messages, in order."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        here = f"{where}[{i}]"
        kind = block.get("type")
        if kind == "tool_result":
            if parts:
                out.append({"role": "user", "content": parts})
                parts = []
            out.append(_tool_result(block, here))
        elif kind == "text":
            parts.append({"type": "text", "text": _text(block, here)})
        elif kind == "image":
            parts.append(_image(block, here))
        else:
            raise _unsupported(kind, here, "a user message")
    if parts or not out:
        out.append({"role": "user", "content": parts})
    return out


def _assistant(blocks: list[dict[str, Any]], where: str) -> dict[str, Any]:
    texts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        here = f"{where}[{i}]"
        kind = block.get("type")
        if kind == "text":
            texts.append({"type": "text", "text": _text(block, here)})
        elif kind == "tool_use":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
            if not (isinstance(call_id, str) and call_id and isinstance(name, str) and isinstance(arguments, dict)):
                raise InvalidRequest(f"{here}: a tool_use block needs a string 'id' and 'name' and an object "
                                     "'input'", param=here)
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": json.dumps(arguments)}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # a model here has no thinking of its own to resume
        else:
            raise _unsupported(kind, here, "an assistant message")
    # No text beside tool calls is no content at all, as OpenAI writes such a turn.
    message: dict[str, Any] = {"role": "assistant", "content": texts if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"{where}.tool_use_id must name the tool_use it answers", param=f"{where}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, list):
        content = "\n".join(_text(part, f"{where}.content[{i}]") for i, part in enumerate(content))
    elif not isinstance(content, str):
        raise InvalidRequest(f"{where}.content must be a string or text blocks", param=f"{where}.content")
    if block.get("is_error"):
        content = f"Error: {content}"  # a tool message has no error flag; the model still has to know it failed
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _text(block: Any, where: str) -> str:
    if not isinstance(block, dict) or block.get("type") != "text":
        raise InvalidRequest(f"{where} must be a text block", param=where)
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"{where}.text must be a string", param=f"{where}.text")
    return text


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    source = source if isinstance(source, dict) else {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str) and source.get("media_type"):
        url = f"data:{source['media_type']};base64,{source['data']}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str) and source["url"]:
        url = source["url"]
    else:
        raise InvalidRequest(f"{where}.source must be a base64 source (media_type, data) or a url source",
                             param=f"{where}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _unsupported(kind: Any, where: str, place: str) -> InvalidRequest:
    return InvalidRequest(f"Content block type {kind!r} is not supported in {place} ({where})", param=f"{where}.type")


# -- answers ----------------------------------------------------------------------------------

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


class Answer:
    """The answer's content blocks, built from the OpenAI chunks as they arrive. `feed` and `end` return the stream
    events they make, so a streamed answer and a whole one are the same blocks."""

    def __init__(self, stop_sequences: list[str]) -> None:
        self.content: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self._stops = stop_sequences
        self._finish_reason: str | None = None
        self._text_open = False  # the last block is text, still growing
        self._space = ""  # leading whitespace held back: it may be all that comes before a tool call

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices", ()):
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or ():
                events += self._tool_use(call)
            self._finish_reason = choice.get("finish_reason") or self._finish_reason
        return events

    def end(self, done: dict[str, Any]) -> list[dict[str, Any]]:
        """Close the answer, given the worker's `done` message: it names the stop string that ended the answer, one
        of the client's stop sequences or the chat template's own end of turn (end_turn)."""
        matched = done.get("stop_sequence") if done.get("stop_sequence") in self._stops else None
        self.stop_reason = "stop_sequence" if matched else _STOP_REASONS.get(self._finish_reason or "", "end_turn")
        self.stop_sequence = matched
        return self._close()

    def _text(self, text: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if not self._text_open:
            text, self._space = self._space + text, ""
            if not text.strip():
                self._space = text
                return []
            self._text_open = True
            self.content.append({"type": "text", "text": ""})
            events.append({"type": "content_block_start", "index": len(self.content) - 1,
                           "content_block": {"type": "text", "text": ""}})
        self.content[-1]["text"] += text
        events.append({"type": "content_block_delta", "index": len(self.content) - 1,
                       "delta": {"type": "text_delta", "text": text}})
        return events

    def _tool_use(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close()
        self._space = ""
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        block = {"type": "tool_use", "id": f"toolu_{call['id'].removeprefix('call_')}", "name": function["name"],
                 "input": json.loads(arguments)}
        self.content.append(block)
        index = len(self.content) - 1
        return [*events, {"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}},
                {"type": "content_block_delta", "index": index,
                 "delta": {"type": "input_json_delta", "partial_json": arguments}},
                {"type": "content_block_stop", "index": index}]

    def _close(self) -> list[dict[str, Any]]:
        if not self._text_open:
            return []
        self._text_open = False
        return [{"type": "content_block_stop", "index": len(self.content) - 1}]


def _usage(raw: dict[str, int] | None) -> dict[str, int]:
    raw = raw or {}
    cached = raw.get("cached_tokens", 0)
    # Anthropic's input_tokens leave out the tokens read from cache, which it counts apart.
    return {"input_tokens": raw.get("prompt_tokens", 0) - cached, "output_tokens": raw.get("completion_tokens", 0),
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def _message(message_id: str, model: str, answer: Answer, usage: dict[str, int]) -> dict[str, Any]:
    return {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": answer.content,
            "stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence, "usage": usage}


async def _sse(job: Job, message_id: str, model: str, answer: Answer) -> AsyncIterator[bytes]:
    yield _event({"type": "message_start", "message": _message(message_id, model, Answer([]), _usage(None))})
    async with contextlib.aclosing(job.stream()) as messages:  # type: ignore[type-var]
        try:
            async for message in messages:
                if message["type"] == "chunk":
                    for event in answer.feed(message["data"]):
                        yield _event(event)
                    continue
                for event in answer.end(message):
                    yield _event(event)
                # The usage is cumulative: here it has the input tokens, which message_start could not know yet.
                yield _event({"type": "message_delta", "usage": _usage(message.get("usage")),
                              "delta": {"stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence}})
                yield _event({"type": "message_stop"})
        except SwitchboardError as exc:
            yield _event(errors.describe(exc, SURFACE)[1])


def _event(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, separators=(",", ":"))
    return f"event: {payload['type']}\ndata: {data}\n\n".encode()


# -- routes -----------------------------------------------------------------------------------

def routes(services: Services) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/messages")
    async def messages(body: MessagesRequest, request: Request) -> Response:
        chat, params = body.internal()  # refuses a malformed conversation before anything is routed
        route = route_request(request, "chat", chat, surface=SURFACE)
        message_id = f"msg_{request.state.request_id}"

        def streamed(job: Job) -> AsyncIterator[bytes]:
            return _sse(job, message_id, job.decision.model_id, Answer(body.stop_sequences or []))

        def whole(job: Job, chunks: list[dict[str, Any]], done: dict[str, Any]) -> dict[str, Any]:
            answer = Answer(body.stop_sequences or [])
            for chunk in chunks:
                answer.feed(chunk)
            answer.end(done)
            return _message(message_id, job.decision.model_id, answer, _usage(done.get("usage")))

        return await common.answer(services, request, route, "chat", params, surface=SURFACE, stream=body.stream,
                                   streamed=streamed, whole=whole)

    @router.post("/v1/messages/count_tokens")
    async def count_tokens(body: Conversation, request: Request) -> Response:
        chat, params = body.internal()
        route = route_request(request, "chat", chat, surface=SURFACE)
        try:
            tokens, decision = await services.count_tokens(route, params)
        except SwitchboardError as exc:
            return errors.error_response(exc, surface=SURFACE)
        return JSONResponse({"input_tokens": tokens}, headers=route_headers(decision))

    return router
