"""The HTTP server as the window sees it: start, stop, restart on the running qasync loop.

The socket is bound here (app.server.run.bind), never inside uvicorn, whose bind failure calls sys.exit: a port
in use or a refused exposure becomes `state_changed(False, "", reason)` and the window stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import uvicorn
from PySide6.QtCore import QObject, Signal

from app.core.config import Config
from app.core.services import Services
from app.server.run import StartupError, bind_all, check_exposure, make_server

_START_TIMEOUT_S = 30.0


class ServerController(QObject):
    """Owns the uvicorn server serving `services` on the running loop.

    state_changed(running, url, error): url is the OpenAI-compatible endpoint (``http://HOST:PORT/v1``) while
    running, else ""; error is why the last start failed or why the server stopped unexpectedly, else "".
    """

    state_changed = Signal(bool, str, str)

    def __init__(self, services: Services, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._services = services
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        # The main port's socket, then Ollama's when config.ollama_port is set.
        self._socks: list[socket.socket] = []
        self._url = ""
        self._error = ""
        self._lock = asyncio.Lock()

    # -- state ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Listening and serving (False while still starting)."""
        return bool(self._url) and self._task is not None and not self._task.done()

    @property
    def url(self) -> str:
        """The endpoint clients use, e.g. http://127.0.0.1:8642/v1; "" while stopped."""
        return self._url

    @property
    def base_url(self) -> str:
        """The server's root (where /health and /api live); "" while stopped."""
        return self._url.removesuffix("/v1")

    @property
    def port(self) -> int | None:
        return int(self._socks[0].getsockname()[1]) if self._socks else None

    @property
    def error(self) -> str:
        return self._error

    @property
    def config(self) -> Config:
        """This run's Config (host, port, api_key, cors_origins): Services.set_server changes it, then `restart()`."""
        return self._services.config

    # -- actions -------------------------------------------------------------------------------
    async def start(self) -> bool:
        """Listen on config.host:config.port (and config.ollama_port when set). False (and state_changed with the
        reason) when it cannot."""
        async with self._lock:
            return await self._start()

    async def stop(self) -> None:
        async with self._lock:
            await self._stop()

    async def restart(self) -> bool:
        """Stop, then start with the current config (after the user changed host, port, key or CORS)."""
        async with self._lock:
            await self._stop()
            return await self._start()

    # -- internals -----------------------------------------------------------------------------
    async def _start(self) -> bool:
        if self._task is not None and not self._task.done():
            return True
        config = self.config
        try:
            check_exposure(self._services)
            socks = bind_all(config)
        except StartupError as exc:
            self._fail(str(exc))
            return False
        server = make_server(self._services)
        self._socks, self._server, self._error = socks, server, ""
        self._task = asyncio.create_task(server.serve(sockets=socks), name="http-server")
        self._task.add_done_callback(self._served)
        deadline = asyncio.get_running_loop().time() + _START_TIMEOUT_S
        while not server.started and not self._task.done():
            if asyncio.get_running_loop().time() > deadline:
                await self._stop()
                self._fail("the server did not start in time")
                return False
            await asyncio.sleep(0.01)
        if self._task.done():
            return False  # _served reported why
        host, port = socks[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self._url = f"http://{shown}:{port}/v1"
        self.state_changed.emit(True, self._url, "")
        return True

    async def _stop(self) -> None:
        task, server = self._task, self._server
        if task is None or server is None:
            return
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        self._close_socket()
        self._task = self._server = None
        self._url = ""
        self.state_changed.emit(False, "", self._error)

    def _served(self, task: asyncio.Task[None]) -> None:
        """The serve task ended: by stop() (reported there) or on its own (reported here)."""
        if self._task is not task or (self._server is not None and self._server.should_exit):
            return
        if task.cancelled():
            reason = "the server was cancelled"
        else:
            exc = task.exception()
            reason = f"the server stopped: {exc}" if exc else "the server stopped"
        self._close_socket()
        self._task = self._server = None
        self._url = ""
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        self._error = reason
        self.state_changed.emit(False, "", reason)

    def _close_socket(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks = []
