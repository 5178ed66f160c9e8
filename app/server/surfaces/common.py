"""What every API surface shares: the route request of an HTTP request, the routing headers, and one request
answered as one Job — streamed in the surface's shape, or gathered whole unless the client hangs up — with its
errors in the surface's error shape."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from app.core.errors import SwitchboardError
from app.core.routing.needs import translate
from app.core.routing.request import RouteRequest, RoutingDecision
from app.core.services import Job, Services
from app.server import errors

# A whole answer, from the Job and what it sent: its chunks and its `done` message (usage, stop_sequence).
Whole = Callable[[Job, list[dict[str, Any]], dict[str, Any]], dict[str, Any]]


def route_request(request: Request, endpoint: str, body: Any, surface: str = "openai") -> RouteRequest:
    """What the router needs to know about an HTTP request: the model, the inferred needs, who asks, and which
    surface it came through. `body` is the internal request (an OpenAI body) the surface made of its own."""
    needs = translate(endpoint, body.model_dump(exclude_none=True))
    # The Guard's name for the caller's key: quotas, pins and records name a key, never hold its secret.
    return RouteRequest(endpoint, body.model, tuple(body.capabilities or ()), needs,
                        session_key=request.headers.get("x-session-id") or body.user, user=body.user,
                        api_key_id=request.state.api_key_name, request_id=request.state.request_id,
                        surface=surface)


def route_headers(decision: RoutingDecision) -> dict[str, str]:
    reason = f"{decision.strategy}; {decision.reason}"
    headers = {"x-switchboard-model": decision.model_id,
               "x-switchboard-route": reason.encode("latin-1", "replace").decode("latin-1")}
    if decision.retried_from:
        headers["x-switchboard-retried-from"] = decision.retried_from
    return headers


async def answer(services: Services, request: Request, route: RouteRequest, op: str, params: dict[str, Any], *,
                 surface: str, stream: bool, streamed: Callable[[Job], AsyncIterator[bytes]], whole: Whole,
                 media_type: str = "text/event-stream",
                 after_whole: Callable[[Job], Awaitable[None]] | None = None) -> Response:
    """Run one request as a Job and answer it: `streamed(job)` makes the body of a streamed answer, `whole(...)`
    the JSON of a whole one, and `after_whole(job)` runs once a whole one has ended however it ended (a stream does
    its own). The first message has arrived when the Job opens, so a model that cannot serve gets a real HTTP error
    in the surface's shape (after one retry on another model), not a broken stream."""
    try:
        job = await services.open(route, op, params)
    except SwitchboardError as exc:
        return errors.error_response(exc, surface=surface)
    headers = route_headers(job.decision)
    if stream:
        return StreamingResponse(streamed(job), media_type=media_type, headers={**headers, "cache-control": "no-cache"})
    try:
        chunks, done = await _collect_unless_disconnected(job, request)
    except SwitchboardError as exc:
        return errors.error_response(exc, headers, surface=surface)
    except _ClientDisconnected:
        return Response(status_code=499)  # nobody is listening; the worker has been told to stop
    finally:
        if after_whole is not None:
            await after_whole(job)
    return JSONResponse(whole(job, chunks, done), headers=headers)


class _ClientDisconnected(Exception):
    """The client hung up before its non-streamed answer was ready; the worker has been told to stop."""


async def _collect_unless_disconnected(job: Job, request: Request) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Gather a non-streamed answer: its chunks and its `done` message (empty without one). A client that hangs up
    cancels the generation, as a streamed one does."""

    async def collect() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        done: dict[str, Any] = {}
        async with contextlib.aclosing(job.stream()) as messages:  # type: ignore[type-var]
            async for message in messages:
                if message["type"] == "chunk":
                    chunks.append(message["data"])
                else:
                    done = message
        return chunks, done

    async def disconnected() -> None:
        # The body has been read, so the next message the server gets is http.disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    collecting = asyncio.ensure_future(collect())
    watching = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((collecting, watching), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
    if not collecting.done():
        collecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collecting
        raise _ClientDisconnected()
    return collecting.result()
