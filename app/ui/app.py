"""The desktop app, composed: one process, the Qt main thread running asyncio through qasync.

The core (behind its Services) and the HTTP server run on that loop; model work stays in the worker processes.
`Desktop` builds QApplication + QEventLoop + Services + ServerController (the tests and the benchmark build
theirs the same way), `Desktop.run()` is the app's life: start, wait for quit, shut down.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

# PySide6 before qasync: qasync picks the first Qt binding already imported.
from PySide6.QtWidgets import QApplication, QSystemTrayIcon

import qasync  # isort: skip

from app.core.config import Config
from app.core.services import Services
from app.server.run import StartupError, check_exposure
from app.ui.main_window import MainWindow
from app.ui.server.control import ServerController
from app.ui.support import icon, spawn
from app.ui.tray import Tray

if TYPE_CHECKING:
    from app.core.storage.store import Store

T = TypeVar("T")


def qt_app(argv: list[str] | None = None) -> QApplication:
    app = QApplication.instance()
    if app is None:
        app = QApplication(argv if argv is not None else sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setApplicationName("Switchboard")
    app.setDesktopFileName("switchboard")
    app.setWindowIcon(icon())
    # The window may hide into the tray while the server keeps serving: only `Desktop.quit()` ends the app.
    app.setQuitOnLastWindowClosed(False)
    return app


class Desktop:
    """QApplication, the qasync loop installed as the current loop, the core's Services and the server controller."""

    def __init__(self, config: Config, *, store: Store | None = None, argv: list[str] | None = None) -> None:
        self.qapp = qt_app(argv)
        # The loop counts as running from now until close_loop(): whoever turns Qt's event loop (our
        # run_until_complete, a dialog, pytest-qt processing events) runs asyncio callbacks with it as the
        # running loop. (qasync's run_until_complete processes events after it unset the running loop.)
        self.loop = qasync.QEventLoop(self.qapp, already_running=True)
        asyncio.set_event_loop(self.loop)
        self.services = Services.create(config, store=store)
        self.controller = ServerController(self.services)
        self.window: MainWindow | None = None
        self.tray: Tray | None = None
        self.first_run = False
        self.found_message = ""
        self._quit = asyncio.Event()
        self._closed = False

    # -- life ----------------------------------------------------------------------------------
    async def start(self, *, show: bool = True, tray: bool | None = None) -> None:
        """Scan, open the window (and the tray where one exists), start the server.

        First run (an empty registry before the scan): the default locations are scanned, what was found is
        shown, and the default model is loaded so the server answers at once.
        """
        self.first_run = not self.services.models.all()
        await self.services.start()
        self.window = MainWindow(self.services, self.controller)
        self.window.quit_requested.connect(self.quit)
        use_tray = QSystemTrayIcon.isSystemTrayAvailable() if tray is None else tray
        if use_tray:
            self.tray = Tray(self.services, self.controller, self.window)
            self.tray.quit_requested.connect(self.quit)
            self.tray.show()
        self.window.set_tray_available(self.tray is not None)
        if show:
            self.window.show()
        await self.controller.start()
        self.found_message = self._describe_scan()
        self.window.statusBar().showMessage(self.found_message, 0 if self.first_run else 15000)
        default = self.services.models.default_id
        if self.first_run and default is not None and self.controller.running:
            spawn(self.services.models.load(default), name=f"first-load-{default}",
                  on_error=lambda exc: self._status(f"Could not load {default}: {exc}"))

    def quit(self) -> None:
        """Ask the app to end: run() then stops the server, closes the core and returns."""
        self._quit.set()

    async def run(self) -> int:
        try:
            await self.start()
            await self._quit.wait()
        finally:
            await self.shutdown()
        return 0

    async def shutdown(self) -> None:
        """Close the window and the tray, stop the server (should_exit), then close the core (workers end)."""
        if self._closed:
            return
        self._closed = True
        # The window first: its views' timers read the core and its store, which close below.
        if self.tray is not None:
            self.tray.hide()
        if self.window is not None:
            self.window.save_geometry()
            self.window.close_for_quit()
        await self.controller.stop()
        await self.services.close()

    def run_until_complete(self, coro: Awaitable[T]) -> T:
        """Turn Qt's event loop (and so the asyncio loop) until `coro` is done; return its result.

        QApplication.exec() is the loop turned, because it alone resets Qt's "quit now" state: after an
        exit(), a bare QEventLoop.exec() would return at once. Should something end the loop before `coro`
        is done (QApplication.quit(), a session logout), the app is asked to quit and the waiting goes on,
        so that run() still shuts down cleanly.
        """
        task = asyncio.ensure_future(coro, loop=self.loop)

        def wake(_task: asyncio.Future[T]) -> None:
            self.qapp.exit(0)

        while not task.done():
            task.add_done_callback(wake)
            self.qapp.exec()
            task.remove_done_callback(wake)
            if not task.done():
                self.quit()
        return task.result()

    def close_loop(self) -> None:
        """After run() (or instead of it): shut down, end what is still pending, close and uninstall the loop."""
        if not self._closed:
            self.run_until_complete(self.shutdown())
        # As asyncio.run does: whatever is still pending (a cancelled load, a spawned action) ends on the loop.
        pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.run_until_complete(self.loop.shutdown_asyncgens())
        # qasync's stop() calls QApplication.exit(): only inside exec(), which then clears Qt's "quit now".
        self.run_until_complete(self._stop_loop())
        self.loop.close()
        asyncio.events._set_running_loop(None)
        asyncio.set_event_loop(None)

    async def _stop_loop(self) -> None:
        self.loop.stop()

    # -- helpers -------------------------------------------------------------------------------
    def _describe_scan(self) -> str:
        scan = self.services.models.last_scan
        models = self.services.models.available()
        default = self.services.models.default_id or "none"
        where = self.controller.url or f"not serving ({self.controller.error})"
        found = f"found {len(scan.models)} model(s)" if scan else f"{len(models)} model(s)"
        if scan is not None and scan.problems:
            found += f", {len(scan.problems)} problem(s)"
        places = "the usual places" if self.services.config.discovery else "the default model and your folders"
        prefix = f"First run: scanned {places}, " if self.first_run else ""
        return f"{prefix}{found}; default {default}; {where}"

    def _status(self, text: str) -> None:
        if self.window is not None:
            self.window.statusBar().showMessage(text, 15000)


def run_gui(config: Config) -> int:
    """`switchboard gui`: the window, the tray and the server in this process until the user quits."""
    desktop = Desktop(config)
    try:
        check_exposure(desktop.services)
    except StartupError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        desktop.close_loop()
        return 2

    def on_signal(_signum: int, _frame: object) -> None:
        desktop.loop.call_soon_threadsafe(desktop.quit)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return desktop.run_until_complete(desktop.run())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        desktop.close_loop()
