"""Running the HTTP server on an asyncio loop: socket bound by us, uvicorn awaited on the running loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket

import uvicorn

from app.core.config import Config
from app.core.services import Services
from app.server.app import create_app
from app.server.guard import HeadLimitProtocol, is_loopback


class StartupError(Exception):
    pass


def check_exposure(services: Services) -> None:
    """Refuse to listen beyond this machine unless a key guards the management API: the config's api_key or a
    stored admin key."""
    host = services.config.host
    if not is_loopback(host) and not services.keys.exists(scope="admin"):
        raise StartupError(
            f"Refusing to listen on {host} without an API key: pass --api-key, set SWITCHBOARD_API_KEY, or add an "
            "admin key (switchboard keys add NAME --scope admin)"
        )


def bind(config: Config) -> socket.socket:
    """Bind here, not in uvicorn: a bind failure inside uvicorn calls sys.exit.

    The socket is made with proto=IPPROTO_TCP because asyncio enables TCP_NODELAY on accepted connections
    only when the listening socket says it is TCP; socket.create_server leaves proto 0, and then every
    keep-alive response stalls ~40 ms on Nagle's algorithm against delayed ACKs (measured: bench overhead).
    """
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
        sock.listen(256)
    except OSError as exc:
        sock.close()
        raise StartupError(f"Cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from exc
    return sock


def make_server(services: Services) -> uvicorn.Server:
    """A uvicorn server that leaves signals to its host (the CLI or the Qt app) and never takes over logging."""
    app = create_app(services)
    server = uvicorn.Server(uvicorn.Config(app, http=HeadLimitProtocol, log_config=None, access_log=False,
                                           lifespan="off", timeout_graceful_shutdown=5))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign, assignment]
    return server


async def serve(config: Config, *, announce: bool = True) -> None:
    services = Services.create(config)
    try:
        check_exposure(services)
        sock = bind(config)
    except StartupError:
        services.close_store()
        raise
    try:
        await services.start()
        server = make_server(services)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        if announce:
            host = f"[{config.host}]" if ":" in config.host else config.host
            port = sock.getsockname()[1]
            models = services.models.available()
            print(f"Switchboard {len(models)} model(s), default {services.models.default_id or 'none'}", flush=True)
            print(f"OpenAI-compatible endpoint: http://{host}:{port}/v1", flush=True)
        await server.serve(sockets=[sock])
    finally:
        await services.close()
        sock.close()


def run(config: Config) -> None:
    asyncio.run(serve(config))
