"""The Routing tab's "Try a request": route a prompt as a chat request would be, without running it, and show
every candidate's score or why it was filtered out (Services.routing.route, the API's POST /api/route).
"""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QFont, QPalette
from PySide6.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import SwitchboardError
from app.core.routing.needs import translate
from app.core.routing.request import RouteRequest
from app.core.services import Services
from app.ui.rows_model import ReplacedRowsModel
from app.ui.support import error_label, error_text, table_view


class CandidatesModel(ReplacedRowsModel):
    """Every model a routing decision considered: its score, or why it was filtered out."""

    COLUMNS = ("Model", "Replica", "Score", "Status", "Reason")

    def cell(self, row: dict[str, Any], column: int, role: int) -> Any:
        if role == Qt.ItemDataRole.DisplayRole:
            if column == 0:
                return row["model_id"]
            if column == 1:
                return str(row.get("replica", 0))
            if column == 2:
                return "—" if row["filtered"] else f"{row['score']:.3f}"
            if column == 3:
                return "filtered out" if row["filtered"] else ("chosen" if row["reason"] == "chosen" else "candidate")
            if column == 4:
                return row["reason"]
        if role == Qt.ItemDataRole.ToolTipRole and column == 4:
            return row["reason"]
        if role == Qt.ItemDataRole.FontRole and row["reason"] == "chosen" and not row["filtered"]:
            font = QFont()
            font.setBold(True)
            return font
        if role == Qt.ItemDataRole.ForegroundRole and row["filtered"]:
            return QPalette().brush(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text)
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (1, 2):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


class TryTab(QWidget):
    """A prompt, capabilities and a session in; the router's decision and its candidates out."""

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.try_prompt = QPlainTextEdit()
        self.try_prompt.setPlaceholderText("A user message, e.g. Write a Python function that reverses a list")
        self.try_prompt.setMaximumHeight(110)
        form.addRow("Prompt", self.try_prompt)
        self.try_capabilities = QLineEdit()
        self.try_capabilities.setPlaceholderText("comma-separated, e.g. vision, tools")
        form.addRow("Capabilities", self.try_capabilities)
        self.try_session = QLineEdit()
        self.try_session.setPlaceholderText("optional x-session-id (affinity and A/B are sticky per session)")
        form.addRow("Session", self.try_session)
        layout.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(QLabel("A dry run: the router decides, nothing is generated."), 1)
        self.try_button = QPushButton("Route")
        self.try_button.clicked.connect(self.try_request)
        row.addWidget(self.try_button)
        layout.addLayout(row)
        self.try_error = error_label()
        layout.addWidget(self.try_error)
        self.decision_label = QLabel()
        self.decision_label.setWordWrap(True)
        self.decision_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.decision_label)
        self.candidates_model = CandidatesModel(self)
        self.candidates_view = table_view(self.candidates_model, 4)
        layout.addWidget(self.candidates_view, 1)

    def try_request(self) -> dict[str, Any] | None:
        """Route the prompt as a chat request would be, without running it; the decision, or None on an error."""
        prompt = self.try_prompt.toPlainText()
        capabilities = tuple(c.strip() for c in self.try_capabilities.text().split(",") if c.strip())
        body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]}
        if capabilities:
            body["capabilities"] = list(capabilities)
        session = self.try_session.text().strip() or None
        try:
            decision = self.services.routing.route(RouteRequest("chat", None, capabilities, translate("chat", body),
                                                                session_key=session))
        except (SwitchboardError, ValueError) as exc:
            self.try_error.setText(error_text(exc))
            self.try_error.show()
            self.decision_label.setText("")
            self.candidates_model.set_rows([])
            return None
        self.try_error.hide()
        explained: dict[str, Any] = decision.explain()
        self.decision_label.setText(
            f"Chosen: <b>{explained['model_id']}</b> · strategy <b>{explained['strategy']}</b> · "
            f"score {explained['total_score']:.3f}<br>Reason: {html.escape(explained['reason'], quote=False)}")
        self.candidates_model.set_rows(explained["candidates"])
        return explained
