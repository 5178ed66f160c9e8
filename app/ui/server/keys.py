"""The Server tab's API keys: the stored keys (name, scope, quotas, last use), adding one (its secret shown once,
in a field to copy) and revoking the selected one, all through Services.keys.

The form's fields derive from app/core/keys.py's KeySpec (scopes, descriptions); a key's quota of 0 tokens means
none. Each action is one small SQLite write, as every other setting of the window.
"""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QHideEvent
from PySide6.QtWidgets import (
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import SwitchboardError
from app.core.keys import SCOPES, KeySpec
from app.core.services import Services
from app.ui.rows_model import ReplacedRowsModel
from app.ui.support import error_label, error_text, table_view

INT_MAX = 2**31 - 1  # what a QSpinBox holds


class KeysModel(ReplacedRowsModel):
    """Rows of Services.keys.report()."""

    COLUMNS = ("Name", "Scope", "Tokens/hour", "Requests/hour", "Used this hour", "Last used")

    def cell(self, row: dict[str, Any], column: int, role: int) -> Any:
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if column == 0:
            return row["name"]
        if column == 1:
            return row["scope"]
        if column in (2, 3):
            limit = row["tokens_per_hour" if column == 2 else "requests_per_hour"]
            return "no limit" if limit is None else f"{limit:,}"
        if column == 4:
            return f"{row['usage']['tokens']:,} tokens, {row['usage']['requests']} requests"
        if column == 5:
            used = row["last_used"]
            return "never" if used is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(used))
        return None


class KeysBox(QGroupBox):
    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__("API keys", parent)
        self.services = services
        fields = KeySpec.model_fields
        layout = QVBoxLayout(self)
        self.model = KeysModel(self)
        self.view = table_view(self.model, 0)
        self.view.setMaximumHeight(160)
        layout.addWidget(self.view)

        row = QHBoxLayout()
        self.name_field = QLineEdit()
        self.name_field.setPlaceholderText("name, e.g. laptop")
        self.name_field.setToolTip(fields["name"].description or "")
        self.scope_field = QComboBox()
        self.scope_field.addItems(SCOPES)
        self.scope_field.setCurrentText(fields["scope"].default)
        self.scope_field.setToolTip(fields["scope"].description or "")
        self.tokens_field = QSpinBox()
        self.tokens_field.setRange(0, INT_MAX)
        self.tokens_field.setSingleStep(10_000)
        self.tokens_field.setSpecialValueText("no token limit")
        self.tokens_field.setSuffix(" tokens/hour")
        self.tokens_field.setToolTip(fields["tokens_per_hour"].description or "")
        self.add_button = QPushButton("Add key")
        self.add_button.clicked.connect(self.add_key)
        self.revoke_button = QPushButton("Revoke")
        self.revoke_button.setToolTip("Delete the selected key: requests sending it are refused at once")
        self.revoke_button.clicked.connect(self.revoke_selected)
        row.addWidget(self.name_field, 1)
        row.addWidget(self.scope_field)
        row.addWidget(self.tokens_field)
        row.addWidget(self.add_button)
        row.addWidget(self.revoke_button)
        layout.addLayout(row)

        # The new key's secret: shown once, to copy; it is not kept anywhere.
        self.secret_row = QWidget()
        secret_layout = QHBoxLayout(self.secret_row)
        secret_layout.setContentsMargins(0, 0, 0, 0)
        self.secret_label = QLabel()
        self.secret_field = QLineEdit()
        self.secret_field.setReadOnly(True)
        self.copy_secret_button = QPushButton("Copy")
        self.copy_secret_button.clicked.connect(
            lambda: QGuiApplication.clipboard().setText(self.secret_field.text()))
        secret_layout.addWidget(self.secret_label)
        secret_layout.addWidget(self.secret_field, 1)
        secret_layout.addWidget(self.copy_secret_button)
        self.secret_row.hide()
        self._secret_of: str | None = None  # the key whose secret is shown
        layout.addWidget(self.secret_row)
        self.error = error_label()
        layout.addWidget(self.error)

        self.view.selectionModel().selectionChanged.connect(self._selection_changed)
        self.refresh()

    def refresh(self) -> None:
        self.model.set_rows(self.services.keys.report())
        self._selection_changed()

    def add_key(self) -> None:
        tokens = self.tokens_field.value()
        try:
            spec = KeySpec.parse(name=self.name_field.text().strip(), scope=self.scope_field.currentText(),
                                 tokens_per_hour=tokens or None)
            key, secret = self.services.keys.add(spec)
        except SwitchboardError as exc:
            self._show_error(exc)
            return
        self.error.hide()
        self.name_field.clear()
        self.tokens_field.setValue(0)
        self._secret_of = key.name
        self.secret_label.setText(f"Secret of '{key.name}' (shown this once only):")
        self.secret_field.setText(secret)
        self.secret_row.show()
        self.refresh()

    def revoke_selected(self) -> None:
        name = self.selected()
        if name is None:
            return
        try:
            self.services.keys.revoke(name)
        except SwitchboardError as exc:
            self._show_error(exc)
            return
        self.error.hide()
        if self._secret_of == name:
            self.hide_secret()
        self.refresh()

    def hide_secret(self) -> None:
        self._secret_of = None
        self.secret_field.clear()
        self.secret_row.hide()

    def hideEvent(self, event: QHideEvent) -> None:
        # Leaving the tab (or hiding the window) forgets the secret: it is shown once, not kept on screen.
        super().hideEvent(event)
        self.hide_secret()

    def selected(self) -> str | None:
        rows = self.view.selectionModel().selectedRows()
        return str(self.model.row(rows[0].row())["name"]) if rows else None

    def _selection_changed(self, *_: Any) -> None:
        self.revoke_button.setEnabled(self.selected() is not None)

    def _show_error(self, exc: BaseException) -> None:
        self.error.setText(error_text(exc))
        self.error.show()
