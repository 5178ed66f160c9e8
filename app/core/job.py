"""One running request: its decision, the worker's messages as they arrive, its deadline and how it ended."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

from app.core.errors import InvalidRequest, RequestTimeout, SwitchboardError, WorkerDied
from app.core.routing.admission import Place
from app.core.routing.request import RouteRequest, RoutingDecision
from app.core.routing.strategies.base import Outcome

# Told when a job ends, however it ends: (decision, request, outcome, status).
OnEnd = Callable[[RoutingDecision, RouteRequest, Outcome, int], None]


def timeout_error(decision: RoutingDecision, timeout_s: float) -> RequestTimeout:
    return RequestTimeout(f"The request to '{decision.model_id}' did not finish within {timeout_s:g} s "
                          "(request_timeout_s); it was cancelled")


class Job:
    """One running request: its decision, and the worker's messages as they arrive."""

    def __init__(self, decision: RoutingDecision, request: RouteRequest, messages: AsyncIterator[dict[str, Any]],
                 first: dict[str, Any], started: float, deadline: float, *, timeout_s: float, on_end: OnEnd) -> None:
        self.decision = decision
        self.request = request
        self._messages = messages
        self._first = first
        self._started = started
        self._deadline = deadline  # the loop's time by which the request must have ended
        self._timeout_s = timeout_s
        self._on_end = on_end

    async def stream(self) -> AsyncIterator[dict[str, Any]]:
        """Every message, the first included. Reports the outcome when the job ends, however it ends.

        The status says whose fault an error was: 400 the request's, 503 and 504 the model's (only those count
        against its health)."""
        ttft: float | None = None
        usage: dict[str, int] = {}
        error: str | None = None
        crashed = False
        status = 499  # the client went away before the end, unless we learn otherwise
        try:
            async with contextlib.aclosing(self._messages):  # type: ignore[type-var]
                message = self._first
                while True:
                    if ttft is None and message["type"] in ("chunk", "done"):
                        ttft = time.monotonic() - self._started
                    if message["type"] == "done":
                        usage = message.get("usage") or _embedding_usage(message)
                        status = 200
                        yield message
                        return
                    yield message
                    try:
                        async with asyncio.timeout_at(self._deadline):
                            message = await anext(self._messages)
                    except TimeoutError:
                        raise timeout_error(self.decision, self._timeout_s) from None
        except SwitchboardError as exc:
            error, crashed = exc.message, isinstance(exc, WorkerDied)
            status = 400 if isinstance(exc, InvalidRequest) else 504 if isinstance(exc, RequestTimeout) else 503
            raise
        finally:
            outcome = Outcome(
                ok=status == 200, ttft_s=ttft, duration_s=time.monotonic() - self._started,
                prompt_tokens=usage.get("prompt_tokens", 0), completion_tokens=usage.get("completion_tokens", 0),
                cached_tokens=usage.get("cached_tokens", 0), error=error, crashed=crashed,
            )
            self._on_end(self.decision, self.request, outcome, status)


async def holding(place: Place,
                   messages: AsyncGenerator[dict[str, Any], None]) -> AsyncGenerator[dict[str, Any], None]:
    """The worker's messages; the queue place is freed when they end, however they end (unread ones too, when the
    loop finalizes the abandoned generator)."""
    try:
        async with contextlib.aclosing(messages):
            async for message in messages:
                yield message
    finally:
        place.release()


def _embedding_usage(message: Mapping[str, Any]) -> dict[str, int]:
    usage = (message.get("result") or {}).get("usage") or {}
    return {"prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": 0}
