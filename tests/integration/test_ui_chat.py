"""The Chat tab on a real Engine with the default model (temp SWITCHBOARD_HOME), on the app's qasync loop: an
answer streamed and labelled, Stop, conversations kept across a restart, Markdown, and the list's edits."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QTimer  # noqa: E402
from PySide6.QtGui import QGuiApplication, QTextFormat  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402

from app.core.config import Config  # noqa: E402
from app.core.services import Services  # noqa: E402
from app.core.services.chats import AnswerFacts, ChatSettings, Message  # noqa: E402
from app.ui.app import Desktop  # noqa: E402
from app.ui.chat.message import MessageBubble  # noqa: E402
from app.ui.chat.panel import ChatPanel  # noqa: E402
from app.ui.chat.view import MessageView  # noqa: E402
from tests.support.qt_loop import run, until  # noqa: E402

DEFAULT_ID = "smollm2-135m-instruct:q4_1"
QUESTION = "What is the capital of France?"
EXACT = ChatSettings(system_prompt="You are a helpful assistant.", temperature=0.0, top_p=0.95, max_tokens=32)


@pytest.fixture
def desktop(qapp: object, sb_home: Path) -> Iterator[Desktop]:
    d = Desktop(Config(port=0, discovery=False))
    run(d, d.services.start())  # the scan finds the default model
    yield d
    d.close_loop()


@pytest.fixture
def panel(qtbot, desktop: Desktop) -> ChatPanel:
    panel = ChatPanel(desktop.services)
    qtbot.add_widget(panel)
    panel.resize(1180, 680)
    panel.show()
    return panel


def ask(desktop: Desktop, panel: ChatPanel, question: str, settings: ChatSettings) -> MessageBubble:
    """Type a question with these settings, send it, wait for the answer to end; the answer's bubble."""
    panel.settings.load(settings)
    panel.input.setPlainText(question)
    task = panel.send()
    assert task is not None and not task.done()  # sending only starts the answer: the Qt thread goes on
    assert panel.stop_button.isEnabled() and not panel.send_button.isEnabled()
    run(desktop, until(lambda: not panel.busy, timeout=180))
    assert panel.send_button.isEnabled() and not panel.stop_button.isEnabled()
    return panel.view.bubbles[-1]


def test_an_answer_streams_labelled_and_is_kept_across_a_restart(desktop: Desktop, panel: ChatPanel,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert panel.model_combo.currentData() == "auto"
    assert DEFAULT_ID in [panel.model_combo.itemData(i) for i in range(panel.model_combo.count())]
    renders: list[str] = []
    render = MessageBubble.set_text

    def counted(bubble: MessageBubble, text: str) -> None:
        renders.append(text)
        render(bubble, text)

    monkeypatch.setattr(MessageBubble, "set_text", counted)
    ticks: list[int] = []
    heartbeat = QTimer(interval=20)
    heartbeat.timeout.connect(lambda: ticks.append(1))
    heartbeat.start()
    answer = ask(desktop, panel, QUESTION, EXACT)
    heartbeat.stop()

    assert "Paris" in answer.text
    decision = desktop.services.decisions(1)[0]
    assert (decision["surface"], decision["model_id"]) == ("window", DEFAULT_ID)
    assert DEFAULT_ID in answer.header.text() and decision["reason"] in answer.header.toolTip()
    assert "TTFT" in answer.facts.text() and "tokens/s" in answer.facts.text()
    [_question, kept] = desktop.services.chats.messages(panel.conversation_id or "")
    assert kept.facts is not None and kept.facts.finish == "stop" and kept.facts.model_id == DEFAULT_ID
    # Throttled: the text was rendered in fewer steps than it had tokens, while the Qt thread kept turning.
    streamed = [text for text in renders if text]
    assert streamed[-1] == answer.text and 1 <= len(streamed) < kept.facts.completion_tokens
    assert ticks
    assert panel.conversations.titles() == [QUESTION]  # titled by its first question

    conversation_id = panel.conversation_id
    run(desktop, desktop.shutdown())
    again = Services.create(Config(discovery=False))
    try:
        [conversation] = again.chats.all()
        assert (conversation.id, conversation.title, conversation.settings) == (conversation_id, QUESTION, EXACT)
        reopened = ChatPanel(again)
        assert reopened.conversation_id == conversation_id
        assert [b.text for b in reopened.view.bubbles] == [QUESTION, answer.text]
        assert reopened.view.bubbles[1].facts.text() == answer.facts.text()
        reopened.deleteLater()
    finally:
        again.close_store()


def test_stop_ends_a_long_answer_early_and_the_tab_stays_usable(desktop: Desktop, panel: ChatPanel) -> None:
    panel.settings.load(ChatSettings(temperature=0.8, max_tokens=2000))
    panel.input.setPlainText("Write a very long story about a dragon who learns to bake bread.")
    assert panel.send() is not None
    run(desktop, until(lambda: len(panel.view.bubbles) == 2 and len(panel.view.bubbles[1].text) > 20, timeout=180))
    panel.stop_button.click()
    run(desktop, until(lambda: not panel.busy))
    stopped = panel.view.bubbles[1]
    assert "stopped" in stopped.facts.text()
    [_question, kept] = desktop.services.chats.messages(panel.conversation_id or "")
    assert kept.facts is not None and kept.facts.finish == "stopped"
    assert 0 < kept.facts.completion_tokens < 2000 and kept.content == stopped.text
    assert desktop.services.decisions(1)[0]["status"] == 499  # the Job's stream was closed: the worker stopped

    panel.conversations.new_button.click()
    assert panel.view.bubbles == [] and len(panel.conversations.titles()) == 2
    assert "Paris" in ask(desktop, panel, QUESTION, EXACT).text


def test_markdown_and_code_blocks_render_and_copy(qtbot) -> None:
    view = MessageView()
    qtbot.add_widget(view)
    view.resize(700, 500)
    view.show()
    text = "Use **this**:\n\n```python\nprint('hi')\n```\n\nThen `run` it."
    facts = AnswerFacts(DEFAULT_ID, "the only candidate", "round_robin", 0.2, 30.0, 12, "stop")
    view.show_messages([Message("user", "How?", 0.0), Message("assistant", text, 1.0, facts)])
    body = view.bubbles[1].body
    assert "```" not in body.toPlainText() and "**" not in body.toPlainText()
    assert "print('hi')" in body.toPlainText()
    block = body.document().begin()
    code = []
    while block.isValid():
        if block.blockFormat().hasProperty(QTextFormat.Property.BlockCodeFence):
            code.append((block.text(), block.blockFormat().background().color().isValid()))
        block = block.next()
    assert code == [("print('hi')", True)]
    assert "TTFT 0.20 s · 30.0 tokens/s · 12 tokens" == view.bubbles[1].facts.text()
    view.bubbles[1].copy_button.click()
    assert QGuiApplication.clipboard().text() == text
    assert view.bubbles[1].copy_button.text() == "Copied"

    # Streamed pieces are rendered by the next tick, not as they arrive.
    answer = view.begin_answer()
    for piece in ("Hello", ", ", "world"):
        view.append(piece)
    assert answer.text == ""
    qtbot.waitUntil(lambda: answer.text == "Hello, world", timeout=2000)
    view.end_answer(None, "stopped before a model answered")
    assert view.answer is None and answer.facts.text() == "stopped before a model answered"


def test_conversations_are_created_renamed_and_deleted(qtbot, panel: ChatPanel, desktop: Desktop) -> None:
    chats = desktop.services.chats
    first = panel.conversation_id
    assert first is not None and [c.id for c in chats.all()] == [first]
    panel.conversations.new_button.click()
    second = panel.conversation_id
    assert second != first and len(chats.all()) == 2
    item = panel.conversations.list.currentItem()
    item.setText("Geography")  # as an edit in place ends
    assert chats.get(second or "").title == "Geography"
    assert "Geography" in panel.conversations.titles()

    panel.model_combo.setCurrentIndex(panel.model_combo.findData(DEFAULT_ID))
    panel.model_combo.activated.emit(panel.model_combo.currentIndex())
    assert chats.get(second or "").model == DEFAULT_ID
    panel.open(first)
    assert panel.model_combo.currentData() == "auto"
    panel.open(second or "")
    assert panel.model_combo.currentData() == DEFAULT_ID

    box = panel.conversations.ask_delete()
    assert box is not None and "Geography" in box.text()
    box.button(QMessageBox.StandardButton.Yes).click()
    assert [c.id for c in chats.all()] == [first] and panel.conversation_id == first
    panel.conversations.ask_delete().button(QMessageBox.StandardButton.Yes).click()  # type: ignore[union-attr]
    # The last one gone, a new empty one opens: the tab always has a conversation to type into.
    assert len(chats.all()) == 1 and panel.conversation_id not in (first, second)
