"""The conversation list: every kept conversation, the most recently used first; new, rename (in place) and
delete (after asking, with a message box opened by open(), no nested exec)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.core.services.chats import Conversation

ID_ROLE = Qt.ItemDataRole.UserRole


class ConversationList(QWidget):
    opened = Signal(str)  # the user picked a conversation (its id)
    new_requested = Signal()
    renamed = Signal(str, str)  # id, new title
    delete_requested = Signal(str)  # id, confirmed

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.list = QListWidget()
        self.list.setEditTriggers(QListWidget.EditTrigger.DoubleClicked | QListWidget.EditTrigger.EditKeyPressed)
        self.list.currentItemChanged.connect(self._current_changed)
        self.list.itemChanged.connect(self._item_changed)
        self.new_button = QPushButton("New chat")
        self.new_button.clicked.connect(self.new_requested)
        self.rename_button = QPushButton("Rename")
        self.rename_button.clicked.connect(self.rename_current)
        self.delete_button = QPushButton("Delete")
        self.delete_button.clicked.connect(self.ask_delete)
        buttons = QHBoxLayout()
        buttons.addWidget(self.rename_button)
        buttons.addWidget(self.delete_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.new_button)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        self._filling = False

    def show_conversations(self, conversations: list[Conversation], current: str | None) -> None:
        """Replace the list (without telling `opened`), `current` selected."""
        self._filling = True
        try:
            self.list.clear()
            for conversation in conversations:
                item = QListWidgetItem(conversation.title)
                item.setData(ID_ROLE, conversation.id)
                item.setToolTip(conversation.title)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
                self.list.addItem(item)
                if conversation.id == current:
                    self.list.setCurrentItem(item)
        finally:
            self._filling = False
        self._update_buttons()

    def current_id(self) -> str | None:
        item = self.list.currentItem()
        return None if item is None else str(item.data(ID_ROLE))

    def titles(self) -> list[str]:
        return [self.list.item(row).text() for row in range(self.list.count())]

    def rename_current(self) -> None:
        item = self.list.currentItem()
        if item is not None:
            self.list.editItem(item)

    def ask_delete(self) -> QMessageBox | None:
        item = self.list.currentItem()
        if item is None:
            return None
        conversation_id = str(item.data(ID_ROLE))
        box = QMessageBox(QMessageBox.Icon.Question, "Delete conversation?",
                          f"Delete “{item.text()}” and all of its messages?",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)
        box.setDefaultButton(QMessageBox.StandardButton.No)

        def answered(_result: int) -> None:
            box.deleteLater()
            if box.clickedButton() is box.button(QMessageBox.StandardButton.Yes):
                self.delete_requested.emit(conversation_id)

        box.finished.connect(answered)
        box.open()
        return box

    def set_busy(self, busy: bool) -> None:
        """While an answer streams, its conversation stays the one shown."""
        self.list.setEnabled(not busy)
        self.new_button.setEnabled(not busy)
        self._update_buttons(busy)

    def _update_buttons(self, busy: bool = False) -> None:
        chosen = self.list.currentItem() is not None and not busy
        self.rename_button.setEnabled(chosen)
        self.delete_button.setEnabled(chosen)

    def _current_changed(self, item: QListWidgetItem | None, _previous: QListWidgetItem | None) -> None:
        self._update_buttons()
        if item is not None and not self._filling:
            self.opened.emit(str(item.data(ID_ROLE)))

    def _item_changed(self, item: QListWidgetItem) -> None:
        if not self._filling:
            self.renamed.emit(str(item.data(ID_ROLE)), item.text())
