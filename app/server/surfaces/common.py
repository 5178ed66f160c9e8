"""What every API surface shares: the route request of an HTTP request, the routing headers, a Job started or its
error, and a non-streamed answer gathered unless the client hangs up."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import Request

from app.core.routing.needs import translate
from app.core.routing.request import RouteRequest, RoutingDecision
from app.core.services import Job


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


class ClientDisconnected(Exception):
    """The client hung up before its non-streamed answer was ready; the worker has been told to stop."""


async def collect_unless_disconnected(job: Job, request: Request) -> tuple[list[dict[str, Any]], dict | None]:
    """Gather a non-streamed answer: its chunks and the raw usage of the `done` message (None without one). A
    client that hangs up cancels the generation, as a streamed one does (ClientDisconnected)."""

    async def collect() -> tuple[list[dict[str, Any]], dict | None]:
        chunks: list[dict[str, Any]] = []
        usage = None
        async with contextlib.aclosing(job.stream()) as messages:  # type: ignore[type-var]
            async for message in messages:
                if message["type"] == "chunk":
                    chunks.append(message["data"])
                else:
                    usage = message.get("usage")
        return chunks, usage

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
        raise ClientDisconnected()
    return collecting.result()
