"""Request bodies of the OpenAI-compatible API. Unknown fields are accepted and ignored, as OpenAI's are."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.core.config import MAX_PARALLEL
from app.core.errors import InvalidRequest
from app.core.routing.quota import MAX_LIMIT

# Far beyond any model's trained context; keeps a remote backend's declared context a sane integer.
MAX_CONTEXT = 2**24


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    # Switchboard's extension: capabilities the serving model must have.
    capabilities: list[str] | None = Field(default=None, max_length=32)
    user: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("a json_schema response format needs its 'json_schema' object")
        return self


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None

    def for_template(self, where: str) -> dict[str, Any]:
        """The message as a chat template renders it: content a string (text parts joined in order) or, with
        images, a list of text and image_url parts. Raises InvalidRequest naming `where` (messages[i])."""
        message = self.model_dump(exclude_none=True)
        # OpenAI's developer messages are what system messages are to every other model.
        if self.role == "developer":
            message["role"] = "system"
        if self.content is None:
            if self.role == "assistant" and (self.tool_calls or message.get("function_call")):
                message["content"] = ""  # templates concatenate content; None would break them
            else:
                raise InvalidRequest(f"{where}.content is required for a {self.role} message",
                                     param=f"{where}.content")
        elif isinstance(self.content, list):
            message["content"] = _content_parts(self.content, f"{where}.content")
        if self.role == "tool" and not self.tool_call_id:
            raise InvalidRequest(f"{where}.tool_call_id is required for a tool message", param=f"{where}.tool_call_id")
        return message


# Content parts a chat model here can take; audio and files would need a model that reads them.
_TEXT_PARTS = {"text": "text", "input_text": "text", "refusal": "refusal"}
_UNSUPPORTED_PARTS = {"input_audio": "audio", "file": "files", "input_file": "files"}


def _content_parts(parts: list[dict[str, Any]], where: str) -> str | list[dict[str, Any]]:
    """Text parts joined in order; images kept as parts (the router sends them to a model with a projector)."""
    kept: list[dict[str, Any]] = []
    for index, part in enumerate(parts):
        here = f"{where}[{index}]"
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            text = part.get(_TEXT_PARTS[kind])
            if not isinstance(text, str):
                raise InvalidRequest(f"{here}.{_TEXT_PARTS[kind]} must be a string", param=here)
            kept.append({"type": "text", "text": text})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise InvalidRequest(f"{here}.image_url.url must be a URL or a data: URI", param=here)
            kept.append({"type": "image_url", "image_url": {"url": url}})
        elif kind in _UNSUPPORTED_PARTS:
            raise InvalidRequest(f"Content part type '{kind}' is not supported: no model here takes "
                                 f"{_UNSUPPORTED_PARTS[kind]}", param=f"{here}.type", code="unsupported_content")
        else:
            raise InvalidRequest(f"Unknown content part type {kind!r} in {here}", param=f"{here}.type")
    if all(part["type"] == "text" for part in kept):
        return "\n".join(part["text"] for part in kept)
    return kept


class _Sampling(_Body):
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)
    # Token id (as a string, JSON's only key type) -> bias added to its logit.
    logit_bias: dict[str, float] | None = Field(default=None, max_length=1024)

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not token.isdigit():
                raise ValueError(f"keys must be token ids (got {token!r})")
            if not -100 <= bias <= 100:
                raise ValueError(f"biases must be between -100 and 100 (got {bias} for token {token})")
        return value

    def sampling(self) -> dict[str, Any]:
        """The llama.cpp arguments the client set (unset ones keep llama.cpp's defaults)."""
        names = ("max_tokens", "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty",
                 "logit_bias")
        params = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if self.stop is not None:
            params["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        return params

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")

    # OpenAI's rule for function names; the grammar and the templates quote them as they are.
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        names = [t.function.name for t in self.tools or ()]
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names the function '{self.tool_choice.function.name}', which is not "
                             "among the tools")
        if self.tool_choice == "required" and not names:
            raise ValueError("tool_choice 'required' needs tools")
        return self

    def params(self) -> dict[str, Any]:
        params = self.sampling()
        if self.max_completion_tokens is not None and "max_tokens" not in params:
            params["max_tokens"] = self.max_completion_tokens
        params["messages"] = [m.for_template(f"messages[{i}]") for i, m in enumerate(self.messages)]
        if self.response_format is not None and self.response_format.type != "text":
            params["response_format"] = self.response_format.model_dump(exclude_none=True, by_alias=True)
        if self.logprobs:
            params["top_logprobs"] = self.top_logprobs or 0
        if self.tools:
            params["tools"] = [tool.model_dump(exclude_none=True) for tool in self.tools]
            if self.tool_choice is not None:
                choice = self.tool_choice
                params["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
            if self.parallel_tool_calls is not None:
                params["parallel_tool_calls"] = self.parallel_tool_calls
        return params


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)
    # OpenAI's default for the legacy completions endpoint.
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool = False
    # The legacy endpoint's logprobs: how many alternatives per token (0 gives the chosen token's alone).
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @model_validator(mode="after")
    def _no_echoed_logprobs(self) -> CompletionRequest:
        if self.echo and self.logprobs is not None:
            raise ValueError("echo with logprobs is not supported: the prompt's own logprobs are not computed")
        return self

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt is supported per request")
        # llama.cpp has nothing to continue from an empty prompt (a model without a BOS token asserts).
        if (value if isinstance(value, str) else value[0]) == "":
            raise ValueError("the prompt must not be empty")
        return value

    def params(self) -> dict[str, Any]:
        params = self.sampling()
        params["prompt"] = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        if self.echo:
            params["echo"] = True
        if self.logprobs is not None:
            params["top_logprobs"] = self.logprobs
        return params


class EmbeddingRequest(_Body):
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if value == "" or value == []:
            raise ValueError("input must not be empty")
        if isinstance(value, list) and len(value) > 2048:
            raise ValueError("at most 2048 inputs per request")
        return value


B = TypeVar("B", bound=_Body)


def internal(model: type[B], data: dict[str, Any]) -> B:
    """An internal request (an OpenAI body) that another API surface made of its own; what it refuses is the
    client's fault, an InvalidRequest naming the field, never a server error."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidRequest(f"Invalid value for '{field}': {message}" if field else message, param=field) from None


# -- management API ---------------------------------------------------------------------------

class QuotaBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens_per_hour: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    requests_per_hour: int | None = Field(default=None, ge=1, le=MAX_LIMIT)


class ModelPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    aliases: list[str] | None = Field(default=None, max_length=64)
    capabilities: list[str] | None = Field(default=None, max_length=64)
    reset_capabilities: bool = False
    weight: float | None = Field(default=None, ge=0)
    quota: QuotaBody | None = None
    fallbacks: list[str] | None = Field(default=None, max_length=16)
    replicas: int | None = Field(default=None, ge=1, le=16)
    # null returns to the configured default (auto); left out, it stays as it is.
    parallel: int | None = Field(default=None, ge=1, le=MAX_PARALLEL)
    default: bool | None = None


class PinBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pinned: bool = True


class RemoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    base_url: str
    model: str
    api_key: str | None = None
    capabilities: list[str] = Field(default_factory=lambda: ["chat", "completion"])
    context_length: int | None = Field(default=None, ge=1, le=MAX_CONTEXT)


class RouterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: str
    params: dict[str, Any] = Field(default_factory=dict)


class ArmBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    model_id: str
    percent: float


class ExperimentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arms: list[ArmBody] = Field(min_length=2)
    metric: str = "ttft_ms"
    # Start routing "auto" requests through this experiment now.
    activate: bool = True


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str
    score: float
