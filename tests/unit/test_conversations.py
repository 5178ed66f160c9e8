"""Conversations on a real Store (order, rename, delete, persistence) and a Reply over a Job fed by hand: its
pieces, its facts, the answer kept, and what a stop leaves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.core.conversations import NEW_TITLE, AnswerFacts, ChatSettings, Conversations, title_from
from app.core.errors import InvalidValue, ModelNotFound
from app.core.job import Job
from app.core.routing.request import RouteRequest, RoutingDecision
from app.core.routing.strategies.base import Outcome
from app.core.routing.strategies.params import fields
from app.core.services.chats import Reply
from app.core.storage.store import Store
from tests.support.clock import TickingClock


def test_conversations_are_listed_most_recently_used_first(store: Store) -> None:
    chats = Conversations(store, clock=TickingClock())
    first = chats.create()
    second = chats.create(model="smol:q4_1", settings=ChatSettings(temperature=0.0))
    assert [c.id for c in chats.all()] == [second.id, first.id]
    chats.add(first.id, "user", "Hello")
    assert [c.id for c in chats.all()] == [first.id, second.id]
    assert chats.get(second.id).model == "smol:q4_1"
    assert chats.get(second.id).settings.temperature == 0.0
    assert chats.get(first.id).title == NEW_TITLE


def test_messages_keep_their_order_and_facts(store: Store) -> None:
    chats = Conversations(store)
    conversation = chats.create()
    facts = AnswerFacts("smol:q4_1", "the default", "round_robin", 0.25, 40.0, 12, "stop")
    chats.add(conversation.id, "user", "What is the capital of France?")
    chats.add(conversation.id, "assistant", "Paris.", facts)
    messages = chats.messages(conversation.id)
    assert [(m.role, m.content) for m in messages] == [("user", "What is the capital of France?"),
                                                       ("assistant", "Paris.")]
    assert messages[0].facts is None
    assert messages[1].facts == facts


def test_rename_configure_and_delete(store: Store) -> None:
    chats = Conversations(store)
    kept, gone = chats.create(), chats.create()
    chats.add(gone.id, "user", "Hello")
    assert chats.rename(kept.id, "Geography").title == "Geography"
    configured = chats.configure(kept.id, "other:q8_0", ChatSettings(max_tokens=64, system_prompt=""))
    assert (configured.model, configured.settings.max_tokens, configured.settings.system_prompt) == (
        "other:q8_0", 64, "")
    chats.delete(gone.id)
    assert [c.id for c in chats.all()] == [kept.id]
    assert store.query("SELECT COUNT(*) FROM conversation_messages")[0][0] == 0
    for change in (lambda: chats.delete(gone.id), lambda: chats.rename(gone.id, "x"), lambda: chats.get(gone.id)):
        with pytest.raises(ModelNotFound):
            change()


def test_conversations_survive_reopening_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "sb.db")
    conversation = Conversations(store).create(settings=ChatSettings(top_p=0.5))
    Conversations(store).add(conversation.id, "user", "Still here?")
    store.close()
    reopened = Store(tmp_path / "sb.db")
    try:
        chats = Conversations(reopened)
        assert [c.settings.top_p for c in chats.all()] == [0.5]
        assert [m.content for m in chats.messages(conversation.id)] == ["Still here?"]
    finally:
        reopened.close()


def test_settings_are_declared_once_for_the_form() -> None:
    by_name = {f.name: f for f in fields(ChatSettings)}
    assert list(by_name) == ["system_prompt", "temperature", "top_p", "max_tokens"]
    assert (by_name["temperature"].minimum, by_name["temperature"].maximum) == (0.0, 2.0)
    assert by_name["top_p"].exclusive_minimum
    assert by_name["max_tokens"].kind == "integer"
    assert ChatSettings(temperature=0.0).sampling() == {"temperature": 0.0, "top_p": 0.95, "max_tokens": 1024}
    with pytest.raises(InvalidValue):
        ChatSettings.parse("chat", {"temperature": 3.0})


def test_titles_come_from_the_first_question() -> None:
    assert title_from("  What is\nthe capital of France?  ") == "What is the capital of France?"
    long = title_from("Explain, in great detail and with examples, how a transformer attends to its context")
    assert long.endswith("…") and len(long) <= 49
    assert title_from("   ") == NEW_TITLE


def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"type": "chunk", "data": {"choices": [{"index": 0, "delta": {"content": text},
                                                   "finish_reason": finish}]}}


def reply_over(store: Store, messages: list[dict[str, Any]]) -> tuple[Reply, str, list[Outcome]]:
    conversations = Conversations(store)
    conversation_id = conversations.create().id
    outcomes: list[Outcome] = []

    async def feed() -> AsyncIterator[dict[str, Any]]:
        for message in messages[1:]:
            yield message

    decision = RoutingDecision("smol:q4_1", "round_robin", "its turn")
    job = Job(decision, RouteRequest("chat", surface="window"), feed(), messages[0], 0.0, 1e12, timeout_s=60,
              on_end=lambda _d, _r, outcome, _s: outcomes.append(outcome))
    return Reply(job, conversations, conversation_id, 0.0), conversation_id, outcomes


async def test_a_reply_streams_its_pieces_and_keeps_the_answer(store: Store) -> None:
    reply, conversation_id, outcomes = reply_over(store, [
        chunk("Par"), chunk("is"), chunk(".", "stop"),
        {"type": "done", "usage": {"prompt_tokens": 9, "completion_tokens": 3}}])
    assert reply.decision.model_id == "smol:q4_1"
    assert [piece async for piece in reply] == ["Par", "is", "."]
    assert reply.facts is not None
    assert (reply.facts.model_id, reply.facts.reason, reply.facts.finish) == ("smol:q4_1", "its turn", "stop")
    assert reply.facts.completion_tokens == 3
    assert reply.facts.ttft_s is not None and reply.facts.ttft_s > 0
    [answer] = Conversations(store).messages(conversation_id)
    assert (answer.role, answer.content, answer.facts) == ("assistant", "Paris.", reply.facts)
    assert [o.ok for o in outcomes] == [True]


async def test_leaving_a_reply_early_stops_it_and_keeps_what_was_said(store: Store) -> None:
    reply, conversation_id, outcomes = reply_over(store, [chunk(f"word{i} ") for i in range(50)])
    pieces = aiter(reply)
    assert [await anext(pieces), await anext(pieces)] == ["word0 ", "word1 "]
    await pieces.aclose()  # type: ignore[attr-defined]
    assert reply.facts is not None and reply.facts.finish == "stopped"
    [answer] = Conversations(store).messages(conversation_id)
    assert answer.content == "word0 word1 "
    assert answer.facts is not None and answer.facts.completion_tokens == 2
    assert [o.ok for o in outcomes] == [False]  # the Job ended unfinished: its worker was told to stop
