"""A conversation's settings form, built from the fields ChatSettings declares (bounds, titles and help written
once, in the core): the system prompt as a text box, each sampling parameter as a spin box."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QDoubleSpinBox, QFormLayout, QLabel, QPlainTextEdit, QSpinBox, QVBoxLayout, QWidget

from app.core.routing.strategies import ParamField
from app.core.services.chats import ChatSettings
from app.ui.routing.strategy import number_field


class SettingsForm(QWidget):
    edited = Signal()  # the user changed a setting (never while load() fills the form)

    def __init__(self, specs: list[ParamField], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._loading = False
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(QLabel("<b>This conversation</b>"))
        layout = QFormLayout()
        layout.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        column.addLayout(layout)
        column.addStretch(1)  # the form keeps to the top
        self.fields: dict[str, QPlainTextEdit | QSpinBox | QDoubleSpinBox] = {}
        for spec in specs:
            field: QPlainTextEdit | QSpinBox | QDoubleSpinBox
            if spec.kind == "text":
                field = QPlainTextEdit()
                field.setPlaceholderText(spec.description)
                field.setToolTip(spec.description)
                field.setMaximumHeight(120)
                # A long text gets the form's whole width, its title above it.
                layout.addRow(QLabel(spec.title))
                layout.addRow(field)
            else:
                field = number_field(spec)
                layout.addRow(spec.title, field)
            self.fields[spec.name] = field
            changed = field.textChanged if isinstance(field, QPlainTextEdit) else field.editingFinished
            changed.connect(self._changed)

    def load(self, settings: ChatSettings) -> None:
        self._loading = True
        try:
            for name, value in settings.dump().items():
                field = self.fields[name]
                if isinstance(field, QPlainTextEdit):
                    field.setPlainText(value)
                else:
                    field.setValue(value)
        finally:
            self._loading = False

    def _changed(self) -> None:
        if not self._loading:
            self.edited.emit()

    def values(self) -> dict[str, Any]:
        return {name: field.toPlainText() if isinstance(field, QPlainTextEdit) else field.value()
                for name, field in self.fields.items()}

    def settings(self) -> ChatSettings:
        """The settings shown; InvalidValue naming a bad one (the spin boxes keep numbers within their bounds)."""
        return ChatSettings.parse("chat", self.values())
