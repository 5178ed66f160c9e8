"""What every request passes first: request id, the size of its head, Host allowlist, API key and scope, body size.

Host names are compared whole: lower-cased, the port and one trailing dot dropped (`LOCALHOST.:8642` is
`localhost`). Only what `ipaddress` parses is an address, so inet_aton's short and hex forms (`127.1`, `0x7f.1`)
stay names that no allowlist holds. Loopback is `localhost`, any 127.0.0.0/8 address, `[::1]`, and the IPv4-mapped
`[::ffff:127.x.y.z]`: an address literal names the page's own origin, so it cannot be DNS rebinding. A request
without a Host header (HTTP/1.0) is let through: browsers always send one, and rebinding needs a browser. An empty
or malformed Host, or two of them, is refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import uuid
from collections.abc import Iterable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core.errors import Forbidden, HeadersTooLarge, PayloadTooLarge, SwitchboardError, Unauthorized
from app.core.keys import KeyRing
from app.server.errors import describe, surface_of

# Request line plus headers; more is 431 (what Node and most proxies allow, four times nginx's default buffer).
HEAD_LIMIT_BYTES = 64 * 1024
# Liveness needs no key; it reveals nothing.
OPEN_PATHS = frozenset({"/health"})


def canonical(host: str) -> str | None:
    """A host without port as compared: lower-case, one trailing dot dropped, an address in its canonical form."""
    host = host.lower().removesuffix(".")
    if not host:
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def host_name(header: str) -> str | None:
    """The host a Host header names, as compared (see canonical), or None when the header is malformed."""
    if header.startswith("["):
        address, closed, rest = header[1:].partition("]")
        if not closed or (rest and not (rest.startswith(":") and _is_port(rest[1:]))):
            return None
        try:
            return str(ipaddress.IPv6Address(address))
        except ValueError:
            return None
    name, colon, port = header.partition(":")
    if colon and not _is_port(port):
        return None
    return canonical(name)


def _is_port(text: str) -> bool:
    # RFC 3986's port is *DIGIT: `localhost:` is allowed.
    return text == "" or (text.isascii() and text.isdigit() and int(text) <= 65535)


def _names_loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_loopback(host: str) -> bool:
    """Whether an address to listen on (or a bare host name) reaches this machine only."""
    name = canonical(host)
    return name is not None and _names_loopback(name)


def host_allowed(headers: list[bytes], extra: frozenset[str]) -> bool:
    """Whether a request with these Host header values may reach a server bound to loopback (see the module)."""
    if not headers:
        return True
    if len(headers) > 1:
        return False
    name = host_name(headers[0].decode("latin-1"))
    return name is not None and (_names_loopback(name) or name in extra)


def head_size(scope: Scope) -> int:
    """Bytes of the request line and headers as sent (give or take optional whitespace)."""
    query = scope.get("query_string", b"")
    target = len(scope.get("raw_path") or scope["path"].encode()) + (len(query) + 1 if query else 0)
    line = len(scope["method"]) + 1 + target + len(" HTTP/1.1\r\n")
    return line + sum(len(name) + len(value) + 4 for name, value in scope["headers"]) + 2


def _head_too_large() -> HeadersTooLarge:
    return HeadersTooLarge(f"The request line and headers exceed the limit of {HEAD_LIMIT_BYTES} bytes")


class Guard:
    """The middleware: refuses what may not pass, and tells the routes who asks (scope["state"]["api_key_name"],
    the name of the request's key, or None)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyRing,
        bind_host: str,
        allowed_hosts: Iterable[str] = (),
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        extra = frozenset(n for n in (host_name(h) or canonical(h) for h in allowed_hosts) if n is not None)
        # Bound to loopback, only loopback names reach us legitimately: anything else is DNS rebinding.
        # Bound elsewhere, the API key protects us; an explicit allowlist still applies if configured.
        self.allowed: frozenset[str] | None = extra if is_loopback(bind_host) or extra else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        rid_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        try:
            state["api_key_name"] = self._check(scope)
        except SwitchboardError as exc:
            await _reply(send_with_id, exc, scope["path"])
            return
        await self.app(scope, self._limited(receive), send_with_id)

    def _check(self, scope: Scope) -> str | None:
        """Refuse what may not pass; returns the name of the request's API key (None without one)."""
        if head_size(scope) > HEAD_LIMIT_BYTES:
            raise _head_too_large()
        headers = dict(scope["headers"])
        if self.allowed is not None:
            hosts = [value for name, value in scope["headers"] if name == b"host"]
            if not host_allowed(hosts, self.allowed):
                shown = b", ".join(hosts).decode("latin-1")[:200]
                raise Forbidden(f"Host '{shown}' is not allowed; use http://127.0.0.1 or http://localhost",
                                code="host_not_allowed")
        key_name = self._authorize(scope, headers)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            raise PayloadTooLarge(f"The request body exceeds the limit of {self.max_body_bytes} bytes")
        return key_name

    def _authorize(self, scope: Scope, headers: dict[bytes, bytes]) -> str | None:
        path = scope["path"]
        if path in OPEN_PATHS or scope["method"] == "OPTIONS":  # OPTIONS: a CORS preflight never sends a key
            return None
        given = headers.get(b"authorization", b"")
        token = given[7:].strip() if given[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"").strip()
        key = self.keys.identify(token) if token else None
        if key is None:
            if self.keys.exists():
                raise Unauthorized("Invalid or missing API key; send 'Authorization: Bearer <key>'")
            return None
        if not key.allows(path):
            raise Forbidden(f"The API key '{key.name}' has the scope '{key.scope}', which may call /v1 and /health "
                            f"only; {path} needs an admin key", code="insufficient_scope")
        return key.name

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


async def _reply(send: Send, exc: SwitchboardError, path: str) -> None:
    status, body = describe(exc, surface_of(path))
    payload = json.dumps(body).encode()
    headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class HeadLimitProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, reading no more of a request's head than the limit allows.

    httptools buffers a request line and headers however long they grow (a 20 MB header is accepted), so the
    Guard's exact check would come after the memory is spent. Here a head stops being read once it is surely over
    the limit: only chunks that begin inside a head and end still inside it are counted (every byte of them is
    head), so the count never exceeds the truth and falls short by at most one chunk."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head: int | None = 0  # bytes of the unfinished head; None between its end and the message's end
        self._heads = 0  # heads and messages ended so far

    def on_headers_complete(self) -> None:
        self._head, self._heads = None, self._heads + 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._head, self._heads = 0, self._heads + 1
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        inside, heads = self._head is not None, self._heads
        super().data_received(data)
        if not inside or self._heads != heads or self._head is None or self.transport.is_closing():
            return
        self._head += len(data)
        if self._head > HEAD_LIMIT_BYTES:
            status, body = describe(_head_too_large())
            payload = json.dumps(body).encode()
            self.transport.write(b"HTTP/1.1 %d Request Header Fields Too Large\r\ncontent-type: application/json"
                                 b"\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                                 % (status, len(payload), payload))
            self.transport.close()
