"""One message of a chat as the view shows it: who said it, its text rendered as Markdown (code blocks shaded, in
a fixed-width font), a copy button, and for an answer the facts of how it was served."""

from __future__ import annotations

import html

from PySide6.QtCore import QSizeF, Qt, QTimer
from PySide6.QtGui import QColor, QGuiApplication, QPalette, QTextBlockFormat, QTextCursor, QTextFormat
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.core.routing.request import RoutingDecision
from app.core.services.chats import AnswerFacts

COPIED_MS = 1500  # how long the copy button says "Copied"
CODE_SHADE = 12  # how much darker (or lighter, on a dark palette) a code block is than the page
FINISH_NOTES = {"stopped": "stopped", "length": "cut at max tokens", "error": "failed"}


def facts_text(facts: AnswerFacts) -> str:
    """The line under an answer: TTFT, tokens/s, tokens, and how it ended when that was not by itself."""
    parts = [f"TTFT {facts.ttft_s:.2f} s" if facts.ttft_s is not None else "no token",
             f"{facts.tokens_per_s:.1f} tokens/s" if facts.tokens_per_s is not None else "",
             f"{facts.completion_tokens} tokens", FINISH_NOTES.get(facts.finish, "")]
    return " · ".join(p for p in parts if p)


def served_html(model_id: str, reason: str) -> str:
    """The header of an answer: the model that served it, and why (the reason names its strategy)."""
    return f"<b>{html.escape(model_id)}</b> <span style='color:gray'>— {html.escape(reason)}</span>"


class MarkdownView(QTextBrowser):
    """Markdown text that is as tall as its content, so the chat scrolls as a whole rather than each message."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setOpenExternalLinks(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.viewport().setAutoFillBackground(False)
        self.document().setDocumentMargin(2)
        self.document().documentLayout().documentSizeChanged.connect(self._fit)
        self.markdown = ""

    def set_markdown(self, text: str) -> None:
        self.markdown = text
        self.setMarkdown(text)
        self._shade_code()

    def _shade_code(self) -> None:
        base = self.palette().color(QPalette.ColorRole.Base)
        shade = QColor(base.darker(100 + CODE_SHADE) if base.lightness() > 128 else base.lighter(130 + CODE_SHADE))
        shaded = QTextBlockFormat()
        shaded.setBackground(shade)
        block = self.document().begin()
        while block.isValid():
            if block.blockFormat().hasProperty(QTextFormat.Property.BlockCodeFence):
                QTextCursor(block).mergeBlockFormat(shaded)
            block = block.next()

    def _fit(self, size: QSizeF) -> None:
        bar = self.horizontalScrollBar()
        extra = bar.sizeHint().height() if bar.isVisible() else 0
        self.setFixedHeight(int(size.height()) + 2 * self.frameWidth() + extra)


class MessageBubble(QFrame):
    """A question or an answer. An answer's header and facts arrive as it is served; its text as it is generated."""

    def __init__(self, role: str, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.role = role
        self.setObjectName("question" if role == "user" else "answer")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.header = QLabel("You" if role == "user" else "<span style='color:gray'>Waiting for a model…</span>")
        self.header.setWordWrap(True)
        self.header.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.copy_button = QToolButton()
        self.copy_button.setText("Copy")
        self.copy_button.setToolTip("Copy this message's text (as Markdown)")
        self.copy_button.setAutoRaise(True)
        self.copy_button.clicked.connect(self.copy)
        self.body = MarkdownView()
        self.facts = QLabel()
        self.facts.setStyleSheet("color: gray; font-size: small;")
        self.facts.setWordWrap(True)
        self.facts.hide()
        top = QHBoxLayout()
        top.addWidget(self.header, 1)
        top.addWidget(self.copy_button, 0, Qt.AlignmentFlag.AlignTop)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        layout.setSpacing(2)
        layout.addLayout(top)
        layout.addWidget(self.body)
        layout.addWidget(self.facts)
        self.set_text(text)

    @property
    def text(self) -> str:
        return self.body.markdown

    def set_text(self, text: str) -> None:
        self.body.set_markdown(text)
        self.copy_button.setEnabled(bool(text))

    def set_served(self, decision: RoutingDecision | AnswerFacts) -> None:
        self.header.setText(served_html(decision.model_id, decision.reason))
        self.header.setToolTip(f"Strategy {decision.strategy}: {decision.reason}")

    def set_facts(self, facts: AnswerFacts) -> None:
        self.set_served(facts)
        self.facts.setText(facts_text(facts))
        self.facts.show()

    def set_note(self, text: str) -> None:
        """What happened instead of (or after) an answer: an error, a stop before the first token."""
        self.facts.setText(html.escape(text))
        self.facts.show()

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.text)
        self.copy_button.setText("Copied")
        QTimer.singleShot(COPIED_MS, self.copy_button, lambda: self.copy_button.setText("Copy"))
