"""ServerPanel: work in progress."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget


class ServerPanel(QWidget):
    def __init__(self, engine: Any, controller: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.engine = engine
        self.controller = controller
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Server"))
