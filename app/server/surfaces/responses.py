"""The OpenAI Responses surface: /v1/responses (create, retrieve, delete) and /v1/responses/input_tokens.

A request's input items become OpenAI chat messages (function_call items an assistant turn's tool_calls,
function_call_output items tool messages), after the stored conversation of its `previous_response_id`; its
answer is written out as output items, streamed as Responses' semantic events. Stored responses keep that chat
conversation (app/core/responses.py), never the instructions, which OpenAI does not carry over either.

Long module: the two halves of one API's shape, its request read as a chat and its answer written as output
items and events; apart, each would only make sense beside the other.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from app.core.errors import InvalidRequest, ModelNotFound, SwitchboardError
from app.core.job import Job
from app.core.responses import StoredResponse
from app.core.services import Services
from app.server import errors, schemas
from app.server.schemas import ChatCompletionRequest
from app.server.surfaces import common
from app.server.surfaces.common import route_request

SURFACE = "responses"


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: TextFormat | None = None


class ResponsesRequest(BaseModel):
    """A Responses request; OpenAI's fields that change nothing here (reasoning, include, truncation) are ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[Any] = Field(default_factory=list)
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    # llama.cpp's samplers beyond OpenAI's, as LM Studio and llama.cpp's server accept them.
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    user: str | None = None
    # Switchboard's extension: capabilities the serving model must have.
    capabilities: list[str] | None = Field(default=None, max_length=32)
    store: bool = True
    stream: bool = False

    @field_validator("input", mode="before")
    @classmethod
    def _text_or_items(cls, value: Any) -> Any:
        if not isinstance(value, str | list):
            raise ValueError("input must be a string or a list of input items")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_sizes(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, text in (value or {}).items():
            if len(key) > 64 or len(text) > 512:
                raise ValueError("keys may have at most 64 characters and values at most 512")
        return value


def routes(services: Services) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/responses")
    async def create(body: ResponsesRequest, request: Request) -> Response:
        turn = await _turn(services, body)
        route = route_request(request, "chat", turn.chat, surface=SURFACE)

        def streamed(job: Job) -> AsyncIterator[bytes]:
            return _events(services, body, turn, job, _Answer(body, request.state.request_id, job.decision.model_id))

        def whole(job: Job, chunks: list[dict[str, Any]], done: dict[str, Any]) -> dict[str, Any]:
            answer = _Answer(body, request.state.request_id, job.decision.model_id)
            for chunk in chunks:
                answer.feed(chunk)
            answer.finish(done.get("usage"))
            _keep(services, body, turn, answer)
            return answer.response

        return await common.answer(services, request, route, "chat", turn.params, surface=SURFACE, stream=body.stream,
                            streamed=streamed, whole=whole)

    @router.post("/v1/responses/input_tokens")
    async def input_tokens(body: ResponsesRequest, request: Request) -> dict[str, Any]:
        turn = await _turn(services, body)
        count, _ = await services.count_tokens(route_request(request, "chat", turn.chat, surface=SURFACE),
                                               turn.params)
        return {"object": "response.input_tokens", "input_tokens": count}

    @router.get("/v1/responses/{response_id}")
    async def retrieve(response_id: str) -> dict[str, Any]:
        return (await _stored(services, response_id, "response_id")).response

    @router.delete("/v1/responses/{response_id}")
    async def delete(response_id: str) -> dict[str, Any]:
        if not await services.responses.delete(response_id):
            raise _not_found(response_id, "response_id")
        return {"id": response_id, "object": "response", "deleted": True}

    return router


# -- the request, as a chat ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Turn:
    chat: ChatCompletionRequest
    params: dict[str, Any]
    history: list[dict[str, Any]]  # the conversation so far without the instructions: what a stored response keeps


async def _turn(services: Services, body: ResponsesRequest) -> _Turn:
    """The request as the internal chat request and the worker's params; InvalidRequest naming a field of the
    Responses request, or a 404 for an unknown previous_response_id."""
    new = _input_messages(body.input)
    tools = _tools(body.tools or [])
    chat: dict[str, Any] = {
        "model": body.model, "user": body.user, "capabilities": body.capabilities,
        "max_tokens": body.max_output_tokens, "temperature": body.temperature, "top_p": body.top_p,
        "tools": tools or None, "tool_choice": _tool_choice(body.tool_choice, tools),
        "response_format": _response_format(body.text.format if body.text else None),
    }
    # Looked up once the request itself is known to be sound.
    history = []
    if body.previous_response_id is not None:
        history = (await _stored(services, body.previous_response_id, "previous_response_id")).conversation
    history = [*history, *new]
    if not history:
        raise InvalidRequest("input must not be empty", param="input")
    system = [{"role": "system", "content": body.instructions}] if body.instructions else []
    chat["messages"] = [*system, *history]
    request = schemas.internal(ChatCompletionRequest, {k: v for k, v in chat.items() if v is not None})
    params = request.params()
    for name in ("top_k", "min_p", "repeat_penalty"):
        if getattr(body, name) is not None:
            params[name] = getattr(body, name)
    if tools and body.parallel_tool_calls is not None:
        params["parallel_tool_calls"] = body.parallel_tool_calls
    return _Turn(request, params, history)


def _input_messages(input_: str | list[Any]) -> list[dict[str, Any]]:
    """Input items as OpenAI chat messages."""
    if isinstance(input_, str):
        return [{"role": "user", "content": input_}]
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(input_):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an input item (an object)", param=where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = {"id": _string(item, "call_id", where), "type": "function",
                    "function": {"name": _string(item, "name", where), "arguments": _string(item, "arguments", where)}}
            # A chat has parallel calls, and the text said before them, as one assistant turn.
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", where),
                             "content": _call_output(item.get("output"), f"{where}.output")})
        elif kind == "reasoning":
            continue  # another model's hidden reasoning: nothing a model here can read
        elif kind is None:
            raise InvalidRequest(f"{where} needs a 'type' (message, function_call or function_call_output)",
                                 param=f"{where}.type")
        else:
            raise InvalidRequest(f"Input item type {kind!r} ({where}) is not supported: only message, function_call "
                                 "and function_call_output items are", param=f"{where}.type", code="unsupported_item")
    return messages


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise InvalidRequest(f"{where}.role must be 'user', 'assistant', 'system' or 'developer' (got {role!r})",
                             param=f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or a list of content parts", param=f"{where}.content")
    return {"role": role, "content": [_part(part, f"{where}.content[{i}]") for i, part in enumerate(content)]}


_UNSUPPORTED_PARTS = {"input_file": "files", "input_audio": "audio"}


def _part(part: Any, where: str) -> dict[str, Any]:
    """A content part as a chat's: text, or an image by URL (data: URIs included)."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "refusal"):
        key = "refusal" if kind == "refusal" else "text"
        if not isinstance(part.get(key), str):
            raise InvalidRequest(f"{where}.{key} must be a string", param=f"{where}.{key}")
        return {"type": "text", "text": part[key]}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise InvalidRequest(f"{where}.image_url must be a URL or a data: URI (file_id is not supported)",
                                 param=f"{where}.image_url", code="unsupported_content")
        return {"type": "image_url", "image_url": {"url": url}}
    if kind in _UNSUPPORTED_PARTS:
        raise InvalidRequest(f"Content part type '{kind}' is not supported: no model here takes "
                             f"{_UNSUPPORTED_PARTS[kind]}", param=f"{where}.type", code="unsupported_content")
    raise InvalidRequest(f"Unknown content part type {kind!r} in {where}", param=f"{where}.type")


def _call_output(output: Any, where: str) -> str:
    """A function's output as a tool message's text (a list of parts: their text, in order)."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        parts = [_part(part, f"{where}[{i}]") for i, part in enumerate(output)]
        if all(part["type"] == "text" for part in parts):
            return "\n".join(part["text"] for part in parts)
    raise InvalidRequest(f"{where} must be a string or a list of input_text parts", param=where)


def _string(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or (key != "arguments" and not value):
        raise InvalidRequest(f"{where}.{key} must be a non-empty string", param=f"{where}.{key}")
    return value


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses' flat function tools as a chat's."""
    converted = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if tool.get("type") != "function":
            raise InvalidRequest(f"Tool type {tool.get('type')!r} ({where}) is not supported: only function tools "
                                 "are", param=f"{where}.type", code="unsupported_tool")
        function = {"name": _string(tool, "name", where),
                    "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}
        function.update({key: tool[key] for key in ("description", "strict") if tool.get(key) is not None})
        converted.append({"type": "function", "function": function})
    return converted


def _tool_choice(choice: str | dict[str, Any] | None, tools: list[dict[str, Any]]) -> str | dict[str, Any] | None:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if name not in {tool["function"]["name"] for tool in tools}:
            raise InvalidRequest(f"tool_choice names the function {name!r}, which is not among the tools",
                                 param="tool_choice.name")
        return {"type": "function", "function": {"name": name}}
    raise InvalidRequest("tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'name': ...}",
                         param="tool_choice")


def _response_format(format_: TextFormat | None) -> dict[str, Any] | None:
    """text.format as a chat's response_format."""
    if format_ is None or format_.type == "text":
        return None
    if format_.type == "json_object":
        return {"type": "json_object"}
    if format_.schema_ is None:
        raise InvalidRequest("A json_schema text format needs its 'schema'", param="text.format.schema")
    schema = {"name": format_.name or "response", "schema": format_.schema_, "strict": format_.strict}
    return {"type": "json_schema", "json_schema": {k: v for k, v in schema.items() if v is not None}}


async def _stored(services: Services, response_id: str, param: str) -> StoredResponse:
    stored = await services.responses.get(response_id)
    if stored is None:
        raise _not_found(response_id, param)
    return stored


def _not_found(response_id: str, param: str) -> ModelNotFound:
    kind = "Previous response" if param == "previous_response_id" else "Response"
    return ModelNotFound(f"{kind} with id '{response_id}' not found.", param=param,
                         code="previous_response_not_found" if param == "previous_response_id" else "not_found")


# -- the answer, as a response ------------------------------------------------------------------

class _Answer:
    """The response being built from the Job's chat chunks. Each step returns the stream events it makes (without
    their sequence numbers), so a streamed and a non-streamed answer are built alike."""

    def __init__(self, body: ResponsesRequest, request_id: str, model: str) -> None:
        self._request_id = request_id
        self._text: list[str] = []  # the open message's text so far
        self._calls: list[dict[str, Any]] = []  # the chat's tool_calls, for the stored conversation
        self._message: int | None = None  # the output index of the message item while its text streams
        self._finish_reason: str | None = None
        self.response: dict[str, Any] = {
            "id": f"resp_{request_id}", "object": "response", "created_at": int(time.time()),
            "status": "in_progress", "completed_at": None, "error": None, "incomplete_details": None,
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens, "model": model,
            "output": [], "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": body.previous_response_id, "reasoning": {"effort": None, "summary": None},
            "store": body.store, "temperature": body.temperature, "top_p": body.top_p,
            "text": {"format": body.text.format.model_dump(by_alias=True, exclude_none=True)
                     if body.text and body.text.format else {"type": "text"}},
            "tool_choice": body.tool_choice or "auto", "tools": body.tools or [], "truncation": "disabled",
            "usage": None, "user": body.user, "metadata": body.metadata or {},
        }

    @property
    def output(self) -> list[dict[str, Any]]:
        return self.response["output"]

    def start(self) -> list[dict[str, Any]]:
        return [{"type": "response.created", "response": self._snapshot()},
                {"type": "response.in_progress", "response": self._snapshot()}]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices", ()):
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._say(delta["content"])
            for call in delta.get("tool_calls") or ():
                events += self._close_message("completed") + self._call(call)
            self._finish_reason = choice.get("finish_reason") or self._finish_reason
        return events

    def finish(self, usage: dict[str, int] | None) -> list[dict[str, Any]]:
        """The last events: the open message closed, then the whole response."""
        cut = self._finish_reason == "length"
        events = [] if self.output else self._say("")  # a response always has an output item, if an empty one
        events += self._close_message("incomplete" if cut else "completed")
        self.response.update(status="incomplete" if cut else "completed", completed_at=int(time.time()),
                             incomplete_details={"reason": "max_output_tokens"} if cut else None)
        if usage is not None:
            self.response["usage"] = {
                "input_tokens": usage["prompt_tokens"],
                # Prompt tokens served from cache: here, reused llama.cpp state.
                "input_tokens_details": {"cached_tokens": usage.get("cached_tokens", 0)},
                "output_tokens": usage["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage["total_tokens"]}
        return [*events, {"type": "response.incomplete" if cut else "response.completed", "response": self.response}]

    def fail(self, exc: SwitchboardError) -> list[dict[str, Any]]:
        error = errors.describe(exc)[1]["error"]
        self.response.update(status="failed", error={"code": error["code"], "message": error["message"]})
        return [{"type": "error", "code": error["code"], "message": error["message"], "param": error["param"]},
                {"type": "response.failed", "response": self.response}]

    def said(self) -> dict[str, Any]:
        """The answer as the chat message a stored conversation ends with."""
        text = "".join(part["text"] for item in self.output if item["type"] == "message" for part in item["content"])
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if self._calls:
            message["tool_calls"] = self._calls
        elif message["content"] is None:
            message["content"] = ""
        return message

    def _snapshot(self) -> dict[str, Any]:
        return {**self.response, "output": []}

    def _say(self, text: str) -> list[dict[str, Any]]:
        events = []
        if self._message is None:
            self._message, self._text = len(self.output), []
            item = {"id": f"msg_{self._request_id}_{self._message}", "type": "message", "status": "in_progress",
                    "role": "assistant", "content": []}
            self.output.append(item)
            events += [
                {"type": "response.output_item.added", "output_index": self._message, "item": {**item, "content": []}},
                {"type": "response.content_part.added", **self._where(), "part": _text_part("")},
            ]
        self._text.append(text)
        if text:
            events.append({"type": "response.output_text.delta", **self._where(), "delta": text, "logprobs": []})
        return events

    def _close_message(self, status: str) -> list[dict[str, Any]]:
        if self._message is None:
            return []
        where, part, item = self._where(), _text_part("".join(self._text)), self.output[self._message]
        item.update(status=status, content=[part])
        events = [{"type": "response.output_text.done", **where, "text": part["text"], "logprobs": []},
                  {"type": "response.content_part.done", **where, "part": part},
                  {"type": "response.output_item.done", "output_index": self._message, "item": item}]
        self._message = None
        return events

    def _call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        """A tool call arrives whole: its item, its arguments in one delta, and its end."""
        function = call["function"]
        self._calls.append({"id": call["id"], "type": "function", "function": function})
        index = len(self.output)
        item = {"id": f"fc_{self._request_id}_{index}", "type": "function_call", "status": "completed",
                "call_id": call["id"], "name": function["name"], "arguments": function["arguments"]}
        self.output.append(item)
        where = {"item_id": item["id"], "output_index": index}
        return [
            {"type": "response.output_item.added", "output_index": index,
             "item": {**item, "status": "in_progress", "arguments": ""}},
            {"type": "response.function_call_arguments.delta", **where, "delta": item["arguments"]},
            {"type": "response.function_call_arguments.done", **where, "name": item["name"],
             "arguments": item["arguments"]},
            {"type": "response.output_item.done", "output_index": index, "item": item},
        ]

    def _where(self) -> dict[str, Any]:
        assert self._message is not None
        return {"item_id": self.output[self._message]["id"], "output_index": self._message, "content_index": 0}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _keep(services: Services, body: ResponsesRequest, turn: _Turn, answer: _Answer) -> None:
    """Store the response, unless the client said `store: false`; before it is sent, so the client may continue
    it at once."""
    if body.store:
        services.responses.save(answer.response, [*turn.history, answer.said()])


async def _events(services: Services, body: ResponsesRequest, turn: _Turn, job: Job,
                  answer: _Answer) -> AsyncIterator[bytes]:
    """Server-sent events, each named by its type as OpenAI's are."""
    numbers = itertools.count()

    def sse(events: list[dict[str, Any]]) -> bytes:
        return b"".join(
            f"event: {event['type']}\ndata: ".encode()
            + json.dumps({**event, "sequence_number": next(numbers)}, separators=(",", ":")).encode() + b"\n\n"
            for event in events)

    yield sse(answer.start())
    async with contextlib.aclosing(job.stream()) as messages:  # type: ignore[type-var]
        try:
            async for message in messages:
                if message["type"] == "chunk":
                    yield sse(answer.feed(message["data"]))
                else:
                    last = answer.finish(message.get("usage"))
                    _keep(services, body, turn, answer)
                    yield sse(last)
        except SwitchboardError as exc:
            yield sse(answer.fail(exc))
