"""What a remote OpenAI-compatible server streams back, turned into worker messages.

`events` frames server-sent events; `messages` reads an OpenAI chunk stream from them into the `chunk`
and `done` messages a WorkerHandle yields; `usage` and `error_message` read the usage and error shapes
that streamed and whole answers share.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx

from app.core.errors import ModelUnavailable, WorkerCrashed

__all__ = ["describe", "drain", "error_message", "events", "messages", "usage"]

_MESSAGE_LIMIT = 500


async def events(lines: AsyncIterator[str]) -> AsyncGenerator[tuple[str, str], None]:
    """(event name, data) for each event that carries data; comments and other fields are skipped."""
    data: list[str] = []
    event = ""
    while True:
        try:
            line: str | None = await anext(lines)
        except StopAsyncIteration:
            line = None
        if line:
            if line.startswith(":"):
                continue  # comment / keep-alive ping
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value.strip()
            continue
        # A blank line (or the end of the body) dispatches the event gathered so far.
        if data:
            payload, data = "\n".join(data), []
            yield event, payload
        event = ""
        if line is None:
            return


async def messages(
    lines: AsyncIterator[str], op: str, where: str, timeout_s: float
) -> AsyncGenerator[dict[str, Any], None]:
    """Yield a `chunk` message per streamed chunk, then one `done` with usage, like WorkerHandle.run.

    `where` names the remote in error messages. A stream that ends without [DONE] or a finish reason
    raises WorkerCrashed: the remote died mid-answer.
    """
    raw_usage: dict[str, Any] | None = None
    content_chunks = 0
    finished = done = False
    try:
        async with contextlib.aclosing(events(lines)) as stream:
            async for event, payload in stream:
                if payload.strip() == "[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    raise ModelUnavailable(f"{where} sent a malformed event: {payload[:200]!r}") from None
                if event == "error" or (isinstance(chunk, dict) and chunk.get("error") is not None):
                    message, _ = error_message(payload.encode())
                    raise ModelUnavailable(f"{where} failed mid-stream: {message}")
                if not isinstance(chunk, dict):
                    raise ModelUnavailable(f"{where} sent a malformed event: {payload[:200]!r}")
                if chunk.get("usage"):
                    raw_usage = chunk["usage"]
                chunk.pop("usage", None)
                choices = chunk.get("choices") or []
                if not choices:
                    continue  # the usage-only chunk, or an empty keep-alive
                for choice in choices:
                    piece = choice.get("delta", {}).get("content") if op == "chat" else choice.get("text")
                    if piece or (op == "chat" and choice.get("delta", {}).get("tool_calls")):
                        content_chunks += 1
                        break
                if any(choice.get("finish_reason") for choice in choices):
                    finished = True
                yield {"type": "chunk", "data": chunk}
        if done:
            await drain(lines)
    except httpx.TimeoutException:
        raise WorkerCrashed(f"{where} stopped sending within {timeout_s:.0f} s") from None
    except (httpx.TransportError, OSError) as exc:
        raise WorkerCrashed(f"{where} broke the connection mid-stream: {describe(exc)}") from None
    if not (done or finished):
        raise WorkerCrashed(f"{where} ended the stream before it was complete")
    yield {"type": "done", "finish_reason": None, "usage": usage(raw_usage, content_chunks)}


async def drain(lines: AsyncIterator[str]) -> None:
    """Read the end of the body after [DONE], so the connection goes back to the pool for the next request."""
    try:
        async with asyncio.timeout(1.0):
            async for _ in lines:
                pass
    except (TimeoutError, httpx.HTTPError, OSError):
        pass  # the response is closed anyway; only keep-alive is lost


def usage(raw: dict[str, Any] | None, content_chunks: int) -> dict[str, int]:
    """A remote's usage in the workers' shape; without one, one completion token per content chunk."""
    if not isinstance(raw, dict):
        return {"prompt_tokens": 0, "completion_tokens": content_chunks, "total_tokens": content_chunks,
                "cached_tokens": 0}
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    details = raw.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(raw.get("total_tokens") or prompt + completion), "cached_tokens": cached}


def error_message(body: bytes) -> tuple[str, str | None]:
    """The message (and code) in an error body: OpenAI's envelope, {"error": "..."}, FastAPI's detail, or text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:_MESSAGE_LIMIT], None
    code = None
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            code = error.get("code")
            error = error.get("message") or error.get("msg") or json.dumps(error)
        elif isinstance(error, list) and error and isinstance(error[0], dict):
            error = error[0].get("msg") or json.dumps(error[0])
        if error is not None:
            return str(error)[:_MESSAGE_LIMIT], code if isinstance(code, str) else None
    return text[:_MESSAGE_LIMIT], None


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + "..."
