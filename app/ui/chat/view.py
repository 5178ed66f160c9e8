"""The message view: a conversation's messages, top to bottom, and the answer being streamed into the last one.

The answer's pieces are only collected as they arrive; a timer renders what has come every FLUSH_MS, so a fast
model costs the Qt thread one Markdown render per tick, never one per token. The view follows the bottom while
the user has not scrolled away from it.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QLabel, QScrollArea, QVBoxLayout, QWidget

from app.core.routing.request import RoutingDecision
from app.core.services.chats import AnswerFacts, Message
from app.ui.chat.message import MessageBubble

FLUSH_MS = 50
FOLLOW_SLACK = 8  # pixels from the bottom that still count as being at the bottom
EMPTY = "Ask anything. Answers come through the same router, queues and quotas as the API's requests."


class MessageView(QScrollArea):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        page = QWidget()
        self._column = QVBoxLayout(page)
        self._column.setSpacing(8)
        self._column.addStretch(1)  # messages stack from the top
        self.empty = QLabel(EMPTY)
        self.empty.setWordWrap(True)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setStyleSheet("color: gray; padding: 40px;")
        self._column.insertWidget(0, self.empty)
        self.setWidget(page)
        self.bubbles: list[MessageBubble] = []
        self.answer: MessageBubble | None = None  # the one being streamed
        self._pending: list[str] = []
        self._timer = QTimer(self)
        self._timer.setInterval(FLUSH_MS)
        self._timer.timeout.connect(self.flush)
        self._follow = True
        bar = self.verticalScrollBar()
        bar.valueChanged.connect(lambda value: setattr(self, "_follow", value >= bar.maximum() - FOLLOW_SLACK))
        bar.rangeChanged.connect(lambda _low, high: bar.setValue(high) if self._follow else None)

    def show_messages(self, messages: list[Message]) -> None:
        """Show a conversation from its start (any answer being streamed is left to its caller)."""
        self._end_stream()
        for bubble in self.bubbles:
            self._column.removeWidget(bubble)
            bubble.deleteLater()
        self.bubbles = []
        for message in messages:
            bubble = self._add(message.role, message.content)
            if message.facts is not None:
                bubble.set_facts(message.facts)
        self._follow = True
        self.empty.setVisible(not self.bubbles)

    def add_question(self, text: str) -> MessageBubble:
        self._follow = True
        return self._add("user", text)

    def begin_answer(self) -> MessageBubble:
        """An empty answer, waiting for its model; pieces given to append() go into it."""
        self._end_stream()
        self.answer = self._add("assistant", "")
        self._timer.start()
        return self.answer

    def served(self, decision: RoutingDecision) -> None:
        if self.answer is not None:
            self.answer.set_served(decision)

    def append(self, piece: str) -> None:
        """Collect a piece of the answer; the next tick renders it."""
        self._pending.append(piece)

    def flush(self) -> None:
        if self.answer is not None and self._pending:
            text = self.answer.text + "".join(self._pending)
            self._pending.clear()
            self.answer.set_text(text)

    def end_answer(self, facts: AnswerFacts | None, note: str = "") -> None:
        """The answer has ended: its last pieces, its facts (None when it never started) and a note, if any."""
        answer = self.answer
        self._end_stream()
        if answer is None:
            return
        if facts is not None:
            answer.set_facts(facts)
        if note:
            answer.set_note(f"{answer.facts.text()} · {note}" if facts is not None else note)

    def _end_stream(self) -> None:
        self.flush()
        self._timer.stop()
        self.answer = None

    def _add(self, role: str, text: str) -> MessageBubble:
        bubble = MessageBubble(role, text)
        self._column.insertWidget(self._column.count() - 1, bubble)
        self.bubbles.append(bubble)
        self.empty.hide()
        return bubble
