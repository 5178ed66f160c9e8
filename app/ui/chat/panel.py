"""The Chat tab: the conversation list, the message view with the question box, and the settings of the open
conversation (its model, system prompt and sampling parameters).

A question is answered by a coroutine started with `spawn` (Services.chats.send, then its Reply's pieces), so the
window keeps painting while a model loads or generates; Stop cancels that coroutine, which closes the Job's stream
and so stops the generation in the worker. Every read and write goes through Services.chats.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QKeyEvent, QShowEvent
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import SwitchboardError
from app.core.routing.request import AUTO
from app.core.services import Services
from app.core.services.chats import ChatSettings, Reply
from app.ui.chat.conversations import ConversationList
from app.ui.chat.settings import SettingsForm
from app.ui.chat.view import MessageView
from app.ui.support import error_label, error_text, spawn


class ChatPanel(QWidget):
    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.chats = services.chats
        self.conversation_id: str | None = None
        self.task: asyncio.Task[None] | None = None  # the answer being generated

        self.conversations = ConversationList()
        self.conversations.opened.connect(self.open)
        self.conversations.new_requested.connect(self.new)
        self.conversations.renamed.connect(self.rename)
        self.conversations.delete_requested.connect(self.delete)

        self.model_combo = QComboBox()
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.model_combo.setToolTip("Auto lets the routing strategy choose, as for requests to the model 'auto'")
        self.model_combo.activated.connect(lambda _index: self._save_settings())
        self.settings_button = QPushButton("Settings")
        self.settings_button.setCheckable(True)
        self.settings_button.setChecked(True)
        self.view = MessageView()
        self.input = QPlainTextEdit()
        self.input.setPlaceholderText("Ask something… (Enter sends, Shift+Enter starts a new line)")
        self.input.setMaximumHeight(96)
        self.input.installEventFilter(self)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self.send)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the answer: the worker stops generating; what it said is kept")
        self.stop_button.clicked.connect(self.stop)
        self.stop_button.setEnabled(False)
        self.error = error_label()

        self.settings = SettingsForm(self.chats.settings_fields())
        self.settings.edited.connect(self._save_settings)
        self.settings.setMinimumWidth(240)
        self.settings_button.toggled.connect(self.settings.setVisible)

        top = QHBoxLayout()
        top.addWidget(QLabel("Model"))
        top.addWidget(self.model_combo)
        top.addStretch(1)
        top.addWidget(self.settings_button)
        ask = QHBoxLayout()
        ask.addWidget(self.input, 1)
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch(1)
        ask.addLayout(buttons)
        middle = QWidget()
        column = QVBoxLayout(middle)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(top)
        column.addWidget(self.view, 1)
        column.addWidget(self.error)
        column.addLayout(ask)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.conversations)
        splitter.addWidget(middle)
        splitter.addWidget(self.settings)
        # The messages take what the window gains; the list and the settings keep their width.
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setStretchFactor(2, 0)
        splitter.setSizes([220, 700, 260])
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)

        self.refresh_models()
        kept = self.chats.all()
        self._show_list(kept[0].id if kept else None)
        if kept:
            self.open(kept[0].id)
        else:
            self.new()

    # -- conversations -------------------------------------------------------------------------
    def new(self) -> None:
        conversation = self.chats.create(self.model_combo.currentData() or AUTO)
        self._show_list(conversation.id)
        self.open(conversation.id)

    def open(self, conversation_id: str) -> None:
        conversation = self.chats.get(conversation_id)
        self.conversation_id = conversation.id
        self._select_model(conversation.model)
        self.settings.load(conversation.settings)
        self.view.show_messages(self.chats.messages(conversation.id))
        self.error.hide()
        self.input.setFocus()

    def rename(self, conversation_id: str, title: str) -> None:
        self._guard(lambda: self.chats.rename(conversation_id, title))
        self._show_list(self.conversation_id)

    def delete(self, conversation_id: str) -> None:
        self._guard(lambda: self.chats.delete(conversation_id))
        kept = self.chats.all()
        if conversation_id != self.conversation_id:
            self._show_list(self.conversation_id)
        elif kept:
            self._show_list(kept[0].id)
            self.open(kept[0].id)
        else:
            self.new()

    def _show_list(self, current: str | None) -> None:
        self.conversations.show_conversations(self.chats.all(), current)

    # -- models and settings -------------------------------------------------------------------
    def refresh_models(self) -> None:
        """The picker's choices from the models served now; the chosen one stays chosen."""
        chosen = self.model_combo.currentData() or AUTO
        self.model_combo.clear()
        for model_id, label in self.chats.models():
            self.model_combo.addItem(label, model_id)
            self.model_combo.setItemData(self.model_combo.count() - 1, model_id, Qt.ItemDataRole.ToolTipRole)
        self._select_model(chosen)

    def _select_model(self, model_id: str) -> None:
        index = self.model_combo.findData(model_id)
        if index < 0:  # a model no longer served: shown, so that the conversation's choice is not lost silently
            self.model_combo.addItem(f"{model_id} (not available)", model_id)
            index = self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(index)

    def _save_settings(self) -> None:
        if self.conversation_id is not None:
            self._guard(lambda: self.chats.configure(self.conversation_id or "", self.model_combo.currentData(),
                                                     self.settings.settings()))

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.refresh_models()

    # -- asking --------------------------------------------------------------------------------
    def send(self) -> asyncio.Task[None] | None:
        """Ask the question typed; the task answering it, or None when there is nothing to ask."""
        text = self.input.toPlainText().strip()
        if not text or self.conversation_id is None or self.busy:
            return None
        try:
            settings = self.settings.settings()
        except SwitchboardError as exc:
            self.show_error(exc)
            return None
        self.input.clear()
        self.error.hide()
        self.task = spawn(self._answer(self.conversation_id, text, settings, self.model_combo.currentData()),
                          on_error=self.show_error, name="chat-answer")
        self._set_busy(True)
        self.task.add_done_callback(lambda _t: self._set_busy(False))
        return self.task

    def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    async def _answer(self, conversation_id: str, text: str, settings: ChatSettings, model: str) -> None:
        self.view.add_question(text)
        self.view.begin_answer()
        reply: Reply | None = None
        note = ""
        try:
            reply = await self.chats.send(conversation_id, text, settings, model=model)
            self.view.served(reply.decision)
            async for piece in reply:
                self.view.append(piece)
        except asyncio.CancelledError:
            note = "" if reply is not None else "stopped before a model answered"
            raise
        except SwitchboardError as exc:
            note = error_text(exc)
            if reply is None:
                self.input.setPlainText(text)  # not asked: the question is back in the box, to try again
            raise
        finally:
            self.view.end_answer(None if reply is None else reply.facts, note)
            self._show_list(self.conversation_id)  # its title, from the first question, and its new place

    def _set_busy(self, busy: bool) -> None:
        self.send_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)
        self.conversations.set_busy(busy)
        self.model_combo.setEnabled(not busy)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if (watched is self.input and event.type() == QEvent.Type.KeyPress and isinstance(event, QKeyEvent)
                and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
                and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier):
            self.send()
            return True
        return super().eventFilter(watched, event)

    # -- errors --------------------------------------------------------------------------------
    def _guard(self, change: Callable[[], object]) -> None:
        try:
            change()
        except SwitchboardError as exc:
            self.show_error(exc)
        else:
            self.error.hide()

    def show_error(self, exc: BaseException) -> None:
        self.error.setText(error_text(exc))
        self.error.show()
