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


def bind(config: Config, port: int | None = None) -> socket.socket:
    """Bind config.host:config.port (or `port`) here, not in uvicorn: a bind failure inside uvicorn calls sys.exit.

    The socket is made with proto=IPPROTO_TCP because asyncio enables TCP_NODELAY on accepted connections
    only when the listening socket says it is TCP; socket.create_server leaves proto 0, and then every
    keep-alive response stalls ~40 ms on Nagle's algorithm against delayed ACKs (measured: bench overhead).
    """
    port = config.port if port is None else port
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, port))
        sock.listen(256)
    except OSError as exc:
        sock.close()
        raise StartupError(f"Cannot listen on {config.host}:{port}: {exc.strerror or exc}") from exc
    return sock


def bind_all(config: Config) -> list[socket.socket]:
    """The main port's socket, then, when config.ollama_port is set, the second one for clients that only know
    Ollama's port: the same app behind the same guard, on the same host. Both or neither."""
    sockets = [bind(config)]
    if config.ollama_port is not None:
        try:
            sockets.append(bind(config, config.ollama_port))
        except StartupError as exc:
            sockets[0].close()
            raise StartupError(f"{exc} (ollama_port, the second port for Ollama's clients)") from exc
    return sockets


def _url(host: str, sock: socket.socket) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{sock.getsockname()[1]}"


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
        sockets = bind_all(config)
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
            models = services.models.available()
            print(f"Switchboard {len(models)} model(s), default {services.models.default_id or 'none'}", flush=True)
            print(f"OpenAI-compatible endpoint: {_url(config.host, sockets[0])}/v1", flush=True)
            for sock in sockets[1:]:
                print(f"Ollama-compatible endpoint: {_url(config.host, sock)}", flush=True)
        await server.serve(sockets=sockets)
    finally:
        await services.close()
        for sock in sockets:
            sock.close()


def run(config: Config) -> None:
    asyncio.run(serve(config))
