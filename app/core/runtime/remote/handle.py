"""Remote OpenAI-compatible backends (another Switchboard, llama.cpp's server, Ollama, vLLM, a cloud API).

A RemoteHandle stands where a WorkerHandle would: the router and the server call `run(op, params)` on it
and get the same messages, `chunk`s then one `done`. Chat and completion requests always stream from
the remote, so the first token reaches the client as soon as the remote sends it, and closing the
generator early closes the HTTP response, which makes the remote stop its own generation.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from app.core.catalog.capabilities import CHAT, COMPLETION, KNOWN
from app.core.errors import InvalidRequest, InvalidValue, ModelUnavailable, SwitchboardError, WorkerCrashed
from app.core.runtime.remote import sse
from app.core.runtime.slots import SlotReport

_PATHS = {"chat": "/chat/completions", "completion": "/completions", "embeddings": "/embeddings"}
_MAX_REDIRECTS = 3


@dataclass
class RemoteSpec:
    """Where a remote model lives. `base_url` is the host root or the URL ending in /v1; both are accepted
    and kept as the root (without /v1), so `api_base` is always `base_url + "/v1"`."""

    base_url: str
    model: str
    # Kept in to_dict: the user configured it, and the dict is stored in the user's own data dir.
    api_key: str | None = None
    capabilities: list[str] = field(default_factory=lambda: [CHAT, COMPLETION])
    context_length: int | None = None
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        self.base_url = normalise_base_url(self.base_url)
        if not isinstance(self.model, str) or not self.model.strip():
            raise InvalidValue("A remote backend needs the name of the model to ask it for")
        self.model = self.model.strip()
        if self.api_key is not None and not isinstance(self.api_key, str):
            raise InvalidValue("api_key must be a string")
        self.api_key = self.api_key or None
        if isinstance(self.capabilities, str) or not self.capabilities:
            raise InvalidValue("capabilities must be a non-empty list")
        unknown = [c for c in self.capabilities if c not in KNOWN]
        if unknown:
            raise InvalidValue(f"Unknown capabilities {unknown}; known: {', '.join(KNOWN)}")
        self.capabilities = list(dict.fromkeys(self.capabilities))
        if self.context_length is not None and (
                isinstance(self.context_length, bool) or not isinstance(self.context_length, int)
                or self.context_length <= 0):
            raise InvalidValue("context_length must be a positive integer")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            raise InvalidValue("timeout_s must be a positive number of seconds")
        self.timeout_s = float(self.timeout_s)

    @property
    def api_base(self) -> str:
        return self.base_url + "/v1"

    def to_dict(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model, "api_key": self.api_key,
                "capabilities": list(self.capabilities), "context_length": self.context_length,
                "timeout_s": self.timeout_s}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RemoteSpec:
        names = ("base_url", "model", "api_key", "capabilities", "context_length", "timeout_s")
        unknown = set(data) - set(names)
        if unknown:
            raise InvalidValue(f"Unknown remote backend fields: {', '.join(sorted(unknown))}")
        if "base_url" not in data or "model" not in data:
            raise InvalidValue("A remote backend needs base_url and model")
        kwargs = {name: data[name] for name in names if name in data}
        for name in ("capabilities", "timeout_s"):
            if kwargs.get(name) is None:
                kwargs.pop(name, None)  # absent or null: the default
        return cls(**kwargs)


def normalise_base_url(url: str) -> str:
    """'http://h:p', 'http://h:p/', 'http://h:p/v1' and 'http://h:p/v1/' all become 'http://h:p'."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidValue("A remote backend needs a base URL such as http://127.0.0.1:8080/v1")
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidValue(f"The remote base URL must start with http:// or https://, not {url!r}")
    if not parts.hostname:
        raise InvalidValue(f"The remote base URL {url!r} names no host")
    if parts.query or parts.fragment:
        raise InvalidValue(f"The remote base URL {url!r} must not carry a query or fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise InvalidValue(f"The remote base URL {url!r} has a bad port: {exc}") from None
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return urlunsplit((parts.scheme.lower(), parts.netloc, path, "", ""))


class RemoteHandle:
    """One remote model, used like a WorkerHandle. Requests run concurrently over one pooled client."""

    def __init__(self, model_id: str, spec: RemoteSpec, client: httpx.AsyncClient | None = None) -> None:
        self.model_id = model_id
        self.spec = spec
        self.replica = 0
        self.pid: int | None = None
        self.n_ctx = spec.context_length
        self.started_at = time.time()
        self.last_used = time.monotonic()
        self.in_flight = 0
        self.jobs_cancelled = 0
        self.dead_reason: str | None = None
        self.on_exit = None
        self.slot_report = SlotReport()  # a remote server reports nothing: routing predicts what it holds
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(
            # Read timeout is per chunk: a long generation is fine as long as tokens keep coming.
            timeout=httpx.Timeout(spec.timeout_s, connect=min(spec.timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16, keepalive_expiry=30.0),
            follow_redirects=False,
        )
        self._closed = False

    @property
    def alive(self) -> bool:
        return not self._closed

    @property
    def busy(self) -> bool:
        return self.in_flight > 0

    def rss(self) -> int:
        return 0

    async def stop(self, grace: float = 0.0) -> None:
        self._closed = True
        self.dead_reason = self.dead_reason or "stopped"
        if self._owns_client:
            await self._client.aclose()

    # -- requests -------------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"accept": "application/json"}
        if self.spec.api_key:
            headers["authorization"] = f"Bearer {self.spec.api_key}"
        return headers

    def _where(self) -> str:
        return f"remote backend {self.spec.base_url}"

    async def _send(self, method: str, url: str, *, json_body: Any = None, stream: bool = False,
                    timeout: float | None = None) -> httpx.Response:
        """Send one request; follow a redirect only within the same scheme, host and port."""
        headers = self._headers()
        if stream:
            headers["accept"] = "text/event-stream"
        for _ in range(_MAX_REDIRECTS + 1):
            request = self._client.build_request(
                method, url, json=json_body, headers=headers,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else httpx.Timeout(timeout))
            try:
                response = await self._client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise WorkerCrashed(f"{self._where()} unreachable: no answer within the timeout "
                                    f"({type(exc).__name__})") from None
            except (httpx.TransportError, OSError) as exc:
                raise WorkerCrashed(f"{self._where()} unreachable: {sse.describe(exc)}") from None
            if not response.is_redirect:
                return response
            await response.aclose()
            target = response.next_request.url if response.next_request else None
            same_origin = target is not None and (target.scheme, target.host, target.port) == (
                request.url.scheme, request.url.host, request.url.port)
            method_kept = method == "GET" or response.status_code in (307, 308)
            if not (same_origin and method_kept):
                raise ModelUnavailable(f"{self._where()} redirected {request.url.path} to "
                                       f"{response.headers.get('location')!r}; not followed (configure the "
                                       "final URL)")
            url = str(target)
        raise ModelUnavailable(f"{self._where()} redirected more than {_MAX_REDIRECTS} times")

    async def _json(self, response: httpx.Response, path: str, error: type[SwitchboardError], what: str) -> Any:
        """The decoded JSON body of a non-streamed answer; an HTTP error or a broken body raises."""
        if response.status_code >= 300:
            await self._fail(response, path)
        try:
            return json.loads(await response.aread())
        except (httpx.HTTPError, ValueError) as exc:
            raise error(f"{self._where()} sent {what}: {sse.describe(exc)}") from None
        finally:
            await response.aclose()

    async def _fail(self, response: httpx.Response, path: str) -> None:
        """Turn an HTTP error status into the matching Switchboard error (the response is closed)."""
        try:
            body = await response.aread()
        except httpx.HTTPError:
            body = b""
        finally:
            await response.aclose()
        message, code = sse.error_message(body)
        status = response.status_code
        text = f"{self._where()} answered HTTP {status}: {message or response.reason_phrase}"
        if status == 404:
            if code == "model_not_found" or "model" in (message or "").lower():
                raise ModelUnavailable(f"{self._where()} has no model '{self.spec.model}': {message}")
            raise ModelUnavailable(f"{self._where()} has no endpoint {path} (HTTP 404): {message}")
        if status < 400 or status in (408, 429) or status >= 500:
            raise ModelUnavailable(text)
        # The remote's own error code is left out: e.g. its "invalid_api_key" is not the client's key.
        raise InvalidRequest(text)

    async def run(self, op: str, params: dict[str, Any], tag: str = "") -> AsyncGenerator[dict[str, Any], None]:
        """Yield `chunk` messages, then one `done` with usage, like WorkerHandle.run (`tag` is for a local
        worker's slot reports: the remote server does not hear it).

        Usage comes from the remote's usage chunk when it sends one. A remote that sends none gets
        prompt_tokens 0 and completion_tokens = the number of chunks that carried content (one token
        per chunk is what llama.cpp-based servers stream).
        """
        if self._closed:
            raise WorkerCrashed(f"The remote backend for '{self.model_id}' is closed")
        path = _PATHS.get(op)
        if path is None:
            raise InvalidRequest(f"Unknown operation {op!r}")
        self.in_flight += 1
        try:
            if op == "embeddings":
                yield {"type": "done", "result": await self._embeddings(params)}
                return
            body = {**_openai_params(op, params), "model": self.spec.model, "stream": True,
                    "stream_options": {"include_usage": True}}
            response = await self._send("POST", self.spec.api_base + path, json_body=body, stream=True)
            try:
                if response.status_code >= 300:
                    await self._fail(response, path)
                content_type = response.headers.get("content-type", "")
                messages = (sse.messages(response.aiter_lines(), op, self._where(), self.spec.timeout_s)
                            if "json" not in content_type
                            else self._whole(response, op))
                async with contextlib.aclosing(messages):
                    async for message in messages:
                        yield message
            except GeneratorExit:
                # Closed early: closing the response below drops the connection; the remote stops generating.
                self.jobs_cancelled += 1
                raise
            finally:
                await response.aclose()
        finally:
            self.in_flight -= 1
            self.last_used = time.monotonic()

    async def _embeddings(self, params: dict[str, Any]) -> dict[str, Any]:
        body = {**params, "model": self.spec.model, "encoding_format": "float"}
        response = await self._send("POST", self.spec.api_base + "/embeddings", json_body=body)
        result = await self._json(response, "/embeddings", WorkerCrashed, "a broken embeddings response")
        if not isinstance(result, dict) or not isinstance(result.get("data"), list):
            raise ModelUnavailable(f"{self._where()} sent an embeddings response without 'data'")
        return result

    async def _whole(self, response: httpx.Response, op: str) -> AsyncGenerator[dict[str, Any], None]:
        """A remote that ignored stream=True and sent one JSON body: replay it as a single chunk."""
        try:
            body = json.loads(await response.aread())
        except httpx.TimeoutException:
            raise WorkerCrashed(f"{self._where()} did not answer within {self.spec.timeout_s:.0f} s") from None
        except (httpx.HTTPError, OSError, ValueError) as exc:
            raise WorkerCrashed(f"{self._where()} sent a broken response: {sse.describe(exc)}") from None
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            raise ModelUnavailable(f"{self._where()} sent a response without 'choices'")
        choices = []
        for choice in body["choices"]:
            if op == "chat":
                message = choice.get("message") or {}
                delta = {key: message[key] for key in ("role", "content", "tool_calls") if message.get(key)}
                choices.append({"index": choice.get("index", 0), "delta": delta, "logprobs": None,
                                "finish_reason": choice.get("finish_reason")})
            else:
                choices.append({"index": choice.get("index", 0), "text": choice.get("text", ""),
                                "logprobs": None, "finish_reason": choice.get("finish_reason")})
        chunk = {"id": body.get("id", ""), "object": "chat.completion.chunk" if op == "chat" else "text_completion",
                 "created": body.get("created", int(time.time())), "model": body.get("model", self.spec.model),
                 "choices": choices}
        yield {"type": "chunk", "data": chunk}
        yield {"type": "done", "finish_reason": None, "usage": sse.usage(body.get("usage"), 1)}

    # -- health ---------------------------------------------------------------------------------------

    async def probe(self, timeout_s: float = 5.0) -> tuple[bool, float, str | None]:
        """(ok, latency in seconds, reason when not ok): GET /v1/models, else the root's /health."""
        start = time.perf_counter()
        reason: str | None = None
        for url in (self.spec.api_base + "/models", self.spec.base_url + "/health"):
            try:
                response = await self._send("GET", url, timeout=timeout_s)
            except (WorkerCrashed, ModelUnavailable) as exc:
                return False, time.perf_counter() - start, exc.message
            try:
                body = await response.aread()
            except httpx.HTTPError as exc:
                return False, time.perf_counter() - start, f"{self._where()} unreachable: {sse.describe(exc)}"
            finally:
                await response.aclose()
            if response.is_success:
                return True, time.perf_counter() - start, None
            message, _ = sse.error_message(body)
            reason = f"{self._where()} answered HTTP {response.status_code} for {url}: " \
                     f"{message or response.reason_phrase}"
            if response.status_code in (401, 403):
                break  # /health would answer without the key and hide the problem
        return False, time.perf_counter() - start, reason

    async def list_models(self) -> list[str]:
        """The model ids the remote offers (GET /v1/models)."""
        response = await self._send("GET", self.spec.api_base + "/models")
        body = await self._json(response, "/models", ModelUnavailable, "a broken model list")
        items = body.get("data") if isinstance(body, dict) else None
        if not isinstance(items, list):
            # Ollama's native /api/tags shape is {"models": [...]}; accept it too.
            items = body.get("models") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise ModelUnavailable(f"{self._where()} sent a model list without 'data'")
        return [str(item.get("id") or item.get("name")) for item in items
                if isinstance(item, dict) and (item.get("id") or item.get("name"))]


def _openai_params(op: str, params: dict[str, Any]) -> dict[str, Any]:
    """A job's parameters as OpenAI's API spells them: a job asks for logprobs as `top_logprobs` alone."""
    if "top_logprobs" not in params:
        return params
    params = dict(params)
    top = params.pop("top_logprobs")
    if op == "chat":
        params["logprobs"] = True
        if top:
            params["top_logprobs"] = top
    else:
        params["logprobs"] = top
    return params
