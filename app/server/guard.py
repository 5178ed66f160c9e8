"""One ASGI middleware for what every request passes first: request id, Host allowlist, API key, body size."""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Iterable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import Forbidden, PayloadTooLarge, SwitchboardError, Unauthorized
from app.server.errors import describe

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# Liveness needs no key; it reveals nothing.
OPEN_PATHS = frozenset({"/health"})


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.startswith("127.")


def host_name(header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower-cased."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        bind_host: str,
        allowed_hosts: Iterable[str] = (),
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        extra = {h.lower() for h in allowed_hosts}
        # Bound to loopback, only loopback names reach us legitimately: anything else is DNS rebinding.
        # Bound elsewhere, the API key protects us; an explicit allowlist still applies if configured.
        if is_loopback(bind_host):
            self.allowed: frozenset[str] | None = LOOPBACK_NAMES | extra
        else:
            self.allowed = frozenset(extra | LOOPBACK_NAMES) if extra else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        rid_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        headers = dict(scope["headers"])
        try:
            self._check(scope, headers)
        except SwitchboardError as exc:
            await _reply(send_with_id, exc)
            return
        await self.app(scope, self._limited(receive), send_with_id)

    def _check(self, scope: Scope, headers: dict[bytes, bytes]) -> None:
        if self.allowed is not None:
            name = host_name(headers.get(b"host", b"").decode("latin-1"))
            if name not in self.allowed and not (name.startswith("127.") and "127.0.0.1" in self.allowed):
                raise Forbidden(f"Host '{name}' is not allowed; use http://127.0.0.1 or http://localhost",
                                code="host_not_allowed")
        if self.api_key is not None and scope["path"] not in OPEN_PATHS and scope["method"] != "OPTIONS":
            given = headers.get(b"authorization", b"")
            token = given[7:].strip() if given[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
            if not hmac.compare_digest(token, self.api_key):
                raise Unauthorized("Invalid or missing API key; send 'Authorization: Bearer <key>'")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            raise PayloadTooLarge(f"The request body exceeds the limit of {self.max_body_bytes} bytes")

    def _limited(self, receive: Receive) -> Receive:
        """Count bytes as they arrive: a chunked body has no Content-Length to check up front."""
        received = 0
        limit = self.max_body_bytes

        async def wrapped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException passes FastAPI's body parsing unchanged (anything else becomes a 400).
                    raise HTTPException(413, f"The request body exceeds the limit of {limit} bytes")
            return message

        return wrapped


async def _reply(send: Send, exc: SwitchboardError) -> None:
    status, body = describe(exc)
    payload = json.dumps(body).encode()
    headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
