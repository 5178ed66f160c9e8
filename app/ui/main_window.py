"""The main window: Chat, Models, Resources, Routing and Server tabs over one Services.

Closing it hides it into the tray (the server keeps serving) where a tray exists and the "close_to_tray"
setting is on; elsewhere it asks, with a message box opened by open() (no nested exec), whether to quit.
"""

from __future__ import annotations

from PySide6.QtCore import QByteArray, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import QLabel, QMainWindow, QMessageBox, QTabWidget, QWidget

from app.core.services import Services
from app.ui.chat.panel import ChatPanel
from app.ui.models.panel import ModelsPanel
from app.ui.resources.panel import ResourcesPanel
from app.ui.routing.panel import RoutingPanel
from app.ui.server.control import ServerController
from app.ui.server.panel import ServerPanel

GEOMETRY_KEY = "window_geometry"
CLOSE_TO_TRAY_KEY = "close_to_tray"

HIDE = "hide"
ASK = "ask"


class MainWindow(QMainWindow):
    # The user chose to quit (menu, or closing without a tray): the app stops the server and the core.
    quit_requested = Signal()
    # The window hid into the tray (the tray shows a one-time notice).
    tray_hint = Signal()

    def __init__(self, services: Services, controller: ServerController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.controller = controller
        self._tray_available = False
        self._quitting = False
        self.setWindowTitle("Switchboard")
        self.setMinimumSize(720, 480)

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.chat_panel = ChatPanel(services, self)
        self.models_panel = ModelsPanel(services, self)
        self.resources_panel = ResourcesPanel(services, self)
        self.routing_panel = RoutingPanel(services, self)
        self.server_panel = ServerPanel(services, controller, self)
        self.tabs.addTab(self.chat_panel, "Chat")
        self.tabs.addTab(self.models_panel, "Models")
        self.tabs.addTab(self.resources_panel, "Resources")
        self.tabs.addTab(self.routing_panel, "Routing")
        self.tabs.addTab(self.server_panel, "Server")
        self.setCentralWidget(self.tabs)

        self.server_state = QLabel()
        self.statusBar().addPermanentWidget(self.server_state)
        controller.state_changed.connect(self._server_state_changed)
        self._server_state_changed(controller.running, controller.url, controller.error)

        menu = self.menuBar().addMenu("&Switchboard")
        self.act_close_to_tray = QAction("Keep serving in the tray when the window closes", self)
        self.act_close_to_tray.setCheckable(True)
        self.act_close_to_tray.setChecked(self.close_to_tray)
        self.act_close_to_tray.toggled.connect(self.set_close_to_tray)
        self.act_close_to_tray.setEnabled(False)
        menu.addAction(self.act_close_to_tray)
        menu.addSeparator()
        act_quit = QAction("&Quit", self)
        act_quit.setShortcut(QKeySequence.StandardKey.Quit)
        act_quit.triggered.connect(self.quit_requested)
        menu.addAction(act_quit)

        if not self.restore_geometry():
            self.resize(1180, 720)

    # -- settings ------------------------------------------------------------------------------
    @property
    def close_to_tray(self) -> bool:
        return bool(self.services.settings.get(CLOSE_TO_TRAY_KEY, True))

    def set_close_to_tray(self, on: bool) -> None:
        self.services.settings.set(CLOSE_TO_TRAY_KEY, bool(on))

    def set_tray_available(self, available: bool) -> None:
        self._tray_available = available
        self.act_close_to_tray.setEnabled(available)

    def save_geometry(self) -> None:
        encoded = bytes(self.saveGeometry().toBase64().data()).decode("ascii")
        self.services.settings.set(GEOMETRY_KEY, encoded)

    def restore_geometry(self) -> bool:
        encoded = self.services.settings.get(GEOMETRY_KEY)
        if not isinstance(encoded, str) or not encoded:
            return False
        return self.restoreGeometry(QByteArray.fromBase64(encoded.encode("ascii")))

    # -- closing -------------------------------------------------------------------------------
    def close_decision(self) -> str:
        """What closing the window does: HIDE into the tray (serving on), or ASK whether to quit."""
        return HIDE if self._tray_available and self.close_to_tray else ASK

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._quitting:
            event.accept()
            return
        self.save_geometry()
        event.ignore()
        if self.close_decision() == HIDE:
            self.hide()
            self.tray_hint.emit()
        else:
            self.ask_quit()

    def ask_quit(self) -> QMessageBox:
        serving = f" and the server at {self.controller.url}" if self.controller.running else ""
        box = QMessageBox(QMessageBox.Icon.Question, "Quit Switchboard?",
                          f"Closing the window stops Switchboard{serving}; loaded models are unloaded.\n\n"
                          "Quit now?",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)
        box.setDefaultButton(QMessageBox.StandardButton.No)
        box.finished.connect(lambda result: self._answered(box, result))
        box.open()
        self._question = box
        return box

    def _answered(self, box: QMessageBox, _result: int) -> None:
        box.deleteLater()
        self.confirm_quit(box.clickedButton() is box.button(QMessageBox.StandardButton.Yes))

    def confirm_quit(self, yes: bool) -> None:
        """The answer to ask_quit(): yes quits the app, no leaves the window open."""
        if yes:
            self.quit_requested.emit()

    def close_for_quit(self) -> None:
        """The app is ending: close for real."""
        self._quitting = True
        self.models_panel.model.detach()
        # Every view's refresh timer stops: the core and its store are about to close.
        for timer in self.findChildren(QTimer):
            timer.stop()
        self.close()

    def show_and_raise(self) -> None:
        self.show()
        self.setWindowState(self.windowState() & ~Qt.WindowState.WindowMinimized)
        self.raise_()
        self.activateWindow()

    # -- server state --------------------------------------------------------------------------
    def _server_state_changed(self, running: bool, url: str, error: str) -> None:
        if running:
            self.server_state.setText(f"<span style='color:#2e7d32'>●</span> Serving {url}")
        elif error:
            self.server_state.setText(f"<span style='color:#c62828'>●</span> Stopped: {error}")
        else:
            self.server_state.setText("<span style='color:#9e9e9e'>●</span> Server stopped")
