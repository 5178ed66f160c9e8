"""The system-tray icon: open the window, start/stop the server, switch routing strategy, quit."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction, QActionGroup
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from app.core.errors import SwitchboardError
from app.core.services import Services
from app.ui.main_window import MainWindow
from app.ui.server.control import ServerController
from app.ui.support import icon, spawn


class Tray(QObject):
    quit_requested = Signal()

    def __init__(self, services: Services, controller: ServerController, window: MainWindow,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.controller = controller
        self.window = window
        self._told_about_tray = False
        self.icons = {True: icon("tray-running"), False: icon("tray-stopped")}

        self.menu = QMenu()
        self.act_open = self.menu.addAction("Open Switchboard")
        self.act_open.triggered.connect(window.show_and_raise)
        self.act_server = self.menu.addAction("Stop server")
        self.act_server.triggered.connect(self.toggle_server)
        self.strategy_menu = self.menu.addMenu("Routing strategy")
        self.strategy_group = QActionGroup(self)
        self.strategy_group.setExclusive(True)
        for name in services.routing.strategies():
            action = QAction(name.replace("_", " "), self.strategy_group)
            action.setData(name)
            action.setCheckable(True)
            self.strategy_menu.addAction(action)
        self.strategy_group.triggered.connect(lambda action: self.switch_strategy(action.data()))
        self.strategy_menu.aboutToShow.connect(self.sync_strategy)
        self.menu.addSeparator()
        self.act_quit = self.menu.addAction("Quit Switchboard")
        self.act_quit.triggered.connect(self.quit_requested)

        self.icon = QSystemTrayIcon(self.icons[controller.running], self)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        controller.state_changed.connect(self._server_state_changed)
        window.tray_hint.connect(self._hint)
        self._server_state_changed(controller.running, controller.url, controller.error)
        self.sync_strategy()

    def show(self) -> None:
        self.icon.show()

    def hide(self) -> None:
        self.icon.hide()

    # -- actions -------------------------------------------------------------------------------
    def toggle_server(self) -> None:
        spawn(self.controller.stop() if self.controller.running else self.controller.start(),
              on_error=lambda exc: self._notify("Server", str(exc)))

    def switch_strategy(self, name: str) -> bool:
        try:
            self.services.routing.configure(name)
        except SwitchboardError as exc:
            self._notify("Routing strategy unchanged", exc.message)
            self.sync_strategy()
            return False
        self.sync_strategy()
        return True

    def sync_strategy(self) -> None:
        """Check the strategy the router uses now (it may have changed in the window or through the API)."""
        current = self.services.routing.strategy
        for action in self.strategy_group.actions():
            action.setChecked(action.data() == current)

    # -- state ---------------------------------------------------------------------------------
    def _server_state_changed(self, running: bool, url: str, error: str) -> None:
        self.icon.setIcon(self.icons[running])
        self.act_server.setText("Stop server" if running else "Start server")
        self.icon.setToolTip(f"Switchboard — serving {url}" if running
                             else f"Switchboard — stopped{': ' + error if error else ''}")

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason == QSystemTrayIcon.ActivationReason.Trigger:
            if self.window.isVisible() and not self.window.isMinimized():
                self.window.hide()
            else:
                self.window.show_and_raise()

    def _hint(self) -> None:
        if not self._told_about_tray:
            self._told_about_tray = True
            self._notify("Switchboard is still running",
                         "The server keeps serving. Open the window or quit from this icon.")

    def _notify(self, title: str, text: str) -> None:
        if self.icon.isVisible() and QSystemTrayIcon.supportsMessages():
            self.icon.showMessage(title, text, self.icons[self.controller.running], 5000)
        self.window.statusBar().showMessage(f"{title}: {text}", 10000)
