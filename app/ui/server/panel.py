"""The server panel: start/stop, where it listens and who may call it (its API keys too), the endpoint URL, and the
request log.

Settings are this run's Config (the same `config.json` the headless server reads): editing them saves it
through Services and restarts the running server through the ServerController. The request log adapts the core's
DecisionLog; a 1 s timer reads it while the panel is visible and touches the view only for rows that changed.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine, Sequence
from typing import Any

from PySide6.QtCore import QModelIndex, Qt, QTimer
from PySide6.QtGui import QGuiApplication, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.core.services import Services
from app.server.guard import is_loopback
from app.ui.rows_model import RowsTableModel
from app.ui.server.keys import KeysBox
from app.ui.support import spawn

LOG_ROWS = 200
LOG_INTERVAL_MS = 1000


class RequestLogModel(RowsTableModel):
    """Rows of Services.decisions(), newest first. `set_rows` inserts, removes and updates only what changed."""

    COLUMNS = ("Time", "Model", "Strategy", "Reason", "Tokens", "Latency", "Status")

    def cell(self, row: dict[str, Any], column: int, role: int) -> Any:
        if role == Qt.ItemDataRole.DisplayRole:
            return _cell(row, column)
        if role == Qt.ItemDataRole.ToolTipRole:
            return _tooltip(row, column)
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (4, 5, 6):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    # -- updates -------------------------------------------------------------------------------
    def set_rows(self, rows: Sequence[dict[str, Any]]) -> bool:
        """Show `rows` (newest first, by `seq`); False when nothing changed, and then nothing is emitted."""
        rows = list(rows)
        old = [r["seq"] for r in self._rows]
        new = [r["seq"] for r in rows]
        newest = old[0] if old else None
        added = sum(1 for s in new if newest is None or s > newest)
        kept = new[added:]
        if old[:len(kept)] != kept:  # not "newer on top, older dropped at the bottom": start over
            self.beginResetModel()
            self._rows = rows
            self.endResetModel()
            return True
        changed = False
        if len(old) > len(kept):
            self.beginRemoveRows(QModelIndex(), len(kept), len(old) - 1)
            del self._rows[len(kept):]
            self.endRemoveRows()
            changed = True
        if added:
            self.beginInsertRows(QModelIndex(), 0, added - 1)
            self._rows[:0] = rows[:added]
            self.endInsertRows()
            changed = True
        for i in range(added, len(rows)):
            if rows[i] != self._rows[i]:  # a request finished: its tokens, latency and status arrived
                self._rows[i] = rows[i]
                self.dataChanged.emit(self.index(i, 0), self.index(i, len(self.COLUMNS) - 1))
                changed = True
        return changed


def _cell(row: dict[str, Any], column: int) -> str:
    if column == 0:
        return time.strftime("%H:%M:%S", time.localtime(row["time"]))
    if column == 1:
        return row["model_id"] + (" (retry)" if row.get("retried") else "")
    if column == 2:
        return str(row["strategy"])
    if column == 3:
        return str(row["reason"])
    done = row.get("status") is not None
    if column == 4:
        if not done:
            return "…"
        return f"{row.get('prompt_tokens') or 0} in / {row.get('completion_tokens') or 0} out"
    if column == 5:
        if not done or row.get("duration_ms") is None:
            return "running…" if not done else "—"
        return _ms(row["duration_ms"])
    if column == 6:
        return "…" if not done else str(row["status"])
    return ""


def _tooltip(row: dict[str, Any], column: int) -> str | None:
    if column == 3:
        return str(row["reason"])
    if column == 4 and row.get("cached_tokens"):
        return f"{row['cached_tokens']} prompt tokens reused from the worker's cache"
    if column == 5 and row.get("ttft_ms") is not None:
        return f"first token after {_ms(row['ttft_ms'])}, done after {_ms(row.get('duration_ms') or 0)}"
    if column == 6 and row.get("error"):
        return str(row["error"])
    if column == 1:
        return f"request {row['request_id']} ({row['endpoint']})"
    return None


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.2f} s"


class ServerPanel(QWidget):
    def __init__(self, services: Services, controller: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.controller = controller
        layout = QVBoxLayout(self)

        # -- state and endpoint ----------------------------------------------------------------
        state_box = QGroupBox("Server")
        state_layout = QVBoxLayout(state_box)
        row = QHBoxLayout()
        self.state_label = QLabel()
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        row.addWidget(self.state_label, 1)
        row.addWidget(self.start_button)
        row.addWidget(self.stop_button)
        state_layout.addLayout(row)
        # The URL to paste into each kind of client, one row per API surface; the first is the OpenAI base URL.
        grid = QGridLayout()
        self.client_fields: list[QLineEdit] = []
        self.copy_buttons: list[QPushButton] = []
        for index, (who, _, setting) in enumerate(client_urls(_endpoint("127.0.0.1", 1), None)):
            field = QLineEdit()
            field.setReadOnly(True)
            field.setToolTip(f"Paste as {setting}")
            copy = QPushButton("Copy")
            copy.setToolTip(f"Copy the URL for {who}")
            copy.clicked.connect(lambda _=False, f=field: QGuiApplication.clipboard().setText(f.text()))
            grid.addWidget(QLabel(who + ":"), index, 0)
            grid.addWidget(field, index, 1)
            grid.addWidget(copy, index, 2)
            self.client_fields.append(field)
            self.copy_buttons.append(copy)
        grid.setColumnStretch(1, 1)
        self.url_field = self.client_fields[0]
        state_layout.addLayout(grid)
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #c0392b;")
        self.error_label.hide()
        state_layout.addWidget(self.error_label)
        layout.addWidget(state_box)

        # -- settings ----------------------------------------------------------------------------
        settings_box = QGroupBox("Settings")
        form = QFormLayout(settings_box)
        self.host_field = QLineEdit()
        self.port_field = QSpinBox()
        self.port_field.setRange(1, 65535)
        self.key_field = QLineEdit()
        self.key_field.setEchoMode(QLineEdit.EchoMode.Password)
        self.key_field.setPlaceholderText("none: only this machine may call the server")
        self.show_key = QCheckBox("Show")
        self.show_key.toggled.connect(lambda on: self.key_field.setEchoMode(
            QLineEdit.EchoMode.Normal if on else QLineEdit.EchoMode.Password))
        key_row = QHBoxLayout()
        key_row.addWidget(self.key_field, 1)
        key_row.addWidget(self.show_key)
        self.cors_field = QLineEdit()
        self.cors_field.setPlaceholderText("comma-separated, e.g. http://localhost:3000 (empty: no CORS headers)")
        form.addRow("Host", self.host_field)
        form.addRow("Port", self.port_field)
        form.addRow("API key", key_row)
        form.addRow("CORS origins", self.cors_field)
        buttons = QHBoxLayout()
        self.apply_button = QPushButton("Save and restart")
        self.apply_button.clicked.connect(self.apply_settings)
        self.revert_button = QPushButton("Revert")
        self.revert_button.clicked.connect(self.load_settings)
        buttons.addStretch(1)
        buttons.addWidget(self.revert_button)
        buttons.addWidget(self.apply_button)
        form.addRow(buttons)
        self.settings_message = QLabel()
        self.settings_message.setWordWrap(True)
        form.addRow(self.settings_message)
        for field in (self.host_field, self.key_field, self.cors_field):
            field.textChanged.connect(self._settings_edited)
        self.port_field.valueChanged.connect(self._settings_edited)
        layout.addWidget(settings_box)
        self.keys_box = KeysBox(services)
        layout.addWidget(self.keys_box)

        # -- request log -------------------------------------------------------------------------
        log_box = QGroupBox("Requests")
        log_layout = QVBoxLayout(log_box)
        self.log_model = RequestLogModel(self)
        self.log_view = QTableView()
        self.log_view.setModel(self.log_model)
        self.log_view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.log_view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.log_view.verticalHeader().hide()
        self.log_view.setWordWrap(False)
        header = self.log_view.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self._fitted = 0  # rows the columns were last fitted to
        log_layout.addWidget(self.log_view)
        layout.addWidget(log_box, 1)

        self.log_timer = QTimer(self)
        self.log_timer.setObjectName("request-log-refresh")
        self.log_timer.setInterval(LOG_INTERVAL_MS)
        self.log_timer.timeout.connect(self._tick)
        self.log_timer.start()

        controller.state_changed.connect(self._on_state)
        self.load_settings()
        self._on_state(bool(controller.running), controller.url or "", "")
        self.refresh_log()

    # -- server state --------------------------------------------------------------------------
    def _on_state(self, running: bool, url: str, error: str) -> None:
        self.start_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        config = self.services.config
        self.state_label.setText("Running" if running else "Stopped")
        base = url if running else _endpoint(config.host, config.port)
        for field, (_, address, _) in zip(self.client_fields, client_urls(base, config.ollama_port), strict=True):
            field.setText(address)
        self.error_label.setText(error)
        self.error_label.setVisible(bool(error))

    @property
    def url(self) -> str:
        return self.url_field.text()

    def start(self) -> None:
        self._spawn(self.controller.start())

    def stop(self) -> None:
        self._spawn(self.controller.stop())

    # -- settings ------------------------------------------------------------------------------
    def load_settings(self) -> None:
        config = self.services.config
        self.host_field.setText(config.host)
        self.port_field.blockSignals(True)
        self.port_field.setValue(int(config.port))
        self.port_field.blockSignals(False)
        self.key_field.setText(config.api_key or "")
        self.cors_field.setText(", ".join(config.cors_origins))
        self.settings_message.setText("")
        self.apply_button.setEnabled(False)
        self.revert_button.setEnabled(False)

    def _settings_edited(self) -> None:
        self.apply_button.setEnabled(True)
        self.revert_button.setEnabled(True)
        self.settings_message.setText("")

    def apply_settings(self) -> None:
        """Validate, write this run's Config and config.json, and restart a running server with them."""
        host = self.host_field.text().strip()
        key = self.key_field.text().strip() or None
        origins = [o.strip() for o in self.cors_field.text().split(",") if o.strip()]
        if not host:
            self._settings_problem("The host cannot be empty (127.0.0.1 keeps the server on this machine).")
            return
        if not is_loopback(host) and not key and not self.services.keys.exists(scope="admin"):
            self._settings_problem(f"Listening on {host} makes the server reachable from other machines: "
                                   "set an API key or add an admin key first.")
            return
        bad = [o for o in origins if o != "*" and not o.startswith(("http://", "https://"))]
        if bad:
            self._settings_problem(f"CORS origins look like http://host:port (not {', '.join(bad)}).")
            return
        try:
            self.services.set_server(host=host, port=self.port_field.value(), api_key=key, cors_origins=origins)
        except OSError as exc:
            self._settings_problem(f"Could not save the settings: {exc}")
            return
        self.load_settings()
        if self.controller.running:
            self.settings_message.setText("Saved; restarting the server…")
            self._spawn(self.controller.restart())
        else:
            self.settings_message.setText("Saved; the server uses them when it starts.")
            self._on_state(False, "", "")

    def _settings_problem(self, text: str) -> None:
        self.settings_message.setText(f'<span style="color:#c0392b">{text}</span>')

    # -- request log ---------------------------------------------------------------------------
    def _tick(self) -> None:
        if self.isVisible():
            self.refresh_log()
            self.keys_box.refresh()  # last use and the hour's usage

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.refresh_log()

    def refresh_log(self) -> bool:
        """Read the decision log; the view hears only of rows that changed. True when any did."""
        changed = self.log_model.set_rows(self.services.decisions(LOG_ROWS))
        if changed and self._fitted < min(self.log_model.rowCount(), 20):
            # Fit the columns to the first rows once (ResizeToContents would ignore rows inserted later and
            # measure every row); afterwards the user's widths stay.
            for column in range(self.log_model.columnCount()):
                if column != 3:
                    self.log_view.resizeColumnToContents(column)
            self._fitted = self.log_model.rowCount()
        return changed

    # -- helpers -------------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a controller coroutine on the (qasync) loop; a failure shows as the state's error."""
        spawn(coro, on_error=lambda exc: self._on_state(bool(self.controller.running), self.controller.url or "",
                                                        str(exc)))


def client_urls(base: str, ollama_port: int | None) -> list[tuple[str, str, str]]:
    """(which clients, the URL they take, the setting it goes in) for each API surface, from the OpenAI base URL
    (http://HOST:PORT/v1). Anthropic's and Ollama's clients add their own paths to the bare server address;
    Ollama's listen on their own port when one is configured."""
    root = base.removesuffix("/v1")
    ollama = root if ollama_port is None else root.rsplit(":", 1)[0] + f":{ollama_port}"
    return [("OpenAI API and Responses (Codex, Agents SDK, most apps)", base, "the base URL / OPENAI_BASE_URL"),
            ("Anthropic Messages (Claude Code)", root, "ANTHROPIC_BASE_URL"),
            ("Ollama API (Open WebUI, VS Code Copilot, Raycast)", ollama, "the Ollama URL / OLLAMA_HOST")]


def _endpoint(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"
