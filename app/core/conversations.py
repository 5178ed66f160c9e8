"""The window's chats: each conversation (its title, the model it asks and its sampling settings) and its
messages in order, every answer with the facts of how it was served. Kept in the store, so they survive a restart.

The user's own edits (create, rename, settings, delete) are written through, as the registry's are; messages are
deferred to the store's background flush, so recording an answer never waits on SQLite. Reads flush first.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import Field

from app.core.errors import ModelNotFound
from app.core.routing.request import AUTO
from app.core.routing.strategies.params import StrategyParams
from app.core.storage.store import Store

NEW_TITLE = "New chat"
TITLE_CHARS = 48  # a title made from the first question is cut to this


class ChatSettings(StrategyParams):
    """A conversation's system prompt and sampling parameters, each declared once (the window's form is built from
    these fields, as the strategies' forms are from theirs: hence the shared base, frozen and strict on names)."""

    system_prompt: str = Field(
        default="You are a helpful assistant.", max_length=20_000, title="System prompt",
        description="the system message that starts the conversation (empty: none)")
    temperature: float = Field(
        default=0.7, ge=0.0, le=2.0, title="Temperature",
        description="randomness of the sampling; 0 always takes the likeliest token")
    top_p: float = Field(
        default=0.95, gt=0.0, le=1.0, title="Top P",
        description="sample only from the likeliest tokens whose probabilities add up to this")
    max_tokens: int = Field(
        default=1024, ge=1, le=32_768, title="Max tokens", description="the longest answer, in tokens")

    def sampling(self) -> dict[str, Any]:
        """The llama.cpp arguments of a chat request."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}


@dataclass(frozen=True, slots=True)
class AnswerFacts:
    """How an answer was served: by which model and why, its time to first token and its generation speed."""

    model_id: str
    reason: str
    strategy: str
    ttft_s: float | None
    tokens_per_s: float | None
    completion_tokens: int
    finish: str  # "stop", "length", "stopped" (by the user) or "error"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnswerFacts:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # "user" | "assistant"
    content: str
    created: float
    facts: AnswerFacts | None = None  # answers only


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    title: str
    model: str  # "auto" or a model id
    settings: ChatSettings
    created: float
    updated: float


class Conversations:
    """The `conversations` and `conversation_messages` tables."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def all(self) -> list[Conversation]:
        """Every conversation, the most recently used first."""
        rows = self._store.query("SELECT id, title, model, settings, created, updated FROM conversations "
                                 "ORDER BY updated DESC, created DESC")
        return [_conversation(row) for row in rows]

    def get(self, conversation_id: str) -> Conversation:
        rows = self._store.query("SELECT id, title, model, settings, created, updated FROM conversations "
                                 "WHERE id = ?", (conversation_id,))
        if not rows:
            raise _not_found(conversation_id)
        return _conversation(rows[0])

    def create(self, *, title: str = NEW_TITLE, model: str = AUTO,
               settings: ChatSettings | None = None) -> Conversation:
        now = self._clock()
        conversation = Conversation(uuid.uuid4().hex, title, model, settings or ChatSettings(), now, now)
        self._store.execute("INSERT INTO conversations (id, title, model, settings, created, updated) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            (conversation.id, title, model, json.dumps(conversation.settings.dump()), now, now))
        return conversation

    def rename(self, conversation_id: str, title: str) -> Conversation:
        self._update(conversation_id, "title = ?", (title,))
        return self.get(conversation_id)

    def configure(self, conversation_id: str, model: str, settings: ChatSettings) -> Conversation:
        """The model it asks and its settings, from its next answer on."""
        self._update(conversation_id, "model = ?, settings = ?", (model, json.dumps(settings.dump())))
        return self.get(conversation_id)

    def delete(self, conversation_id: str) -> None:
        self._store.execute("DELETE FROM conversation_messages WHERE conversation_id = ?", (conversation_id,))
        if self._store.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)) == 0:
            raise _not_found(conversation_id)

    def messages(self, conversation_id: str) -> list[Message]:
        rows = self._store.query("SELECT role, content, created, facts FROM conversation_messages "
                                 "WHERE conversation_id = ? ORDER BY seq", (conversation_id,))
        return [Message(role, content, created, None if facts is None else AnswerFacts.from_dict(json.loads(facts)))
                for role, content, created, facts in rows]

    def add(self, conversation_id: str, role: str, content: str, facts: AnswerFacts | None = None) -> Message:
        """Append a message (deferred); the conversation counts as used now."""
        message = Message(role, content, self._clock(), facts)
        self._store.defer("INSERT INTO conversation_messages (conversation_id, role, content, facts, created) "
                          "VALUES (?, ?, ?, ?, ?)",
                          (conversation_id, role, content, None if facts is None else json.dumps(facts.to_dict()),
                           message.created))
        self._store.defer("UPDATE conversations SET updated = ? WHERE id = ?", (message.created, conversation_id))
        return message

    def _update(self, conversation_id: str, assignments: str, params: tuple[Any, ...]) -> None:
        # `assignments` is this module's own SQL; the values are parameters. Only a new message counts as use.
        changed = self._store.execute(f"UPDATE conversations SET {assignments} WHERE id = ?",
                                      (*params, conversation_id))
        if changed == 0:
            raise _not_found(conversation_id)


def _not_found(conversation_id: str) -> ModelNotFound:
    return ModelNotFound(f"No conversation has the id '{conversation_id}'", param="conversation_id",
                         code="conversation_not_found")


def title_from(text: str) -> str:
    """A conversation's title from its first question: its first line, cut at a word near TITLE_CHARS."""
    line = " ".join(text.split())
    if len(line) <= TITLE_CHARS:
        return line or NEW_TITLE
    return line[:TITLE_CHARS].rsplit(" ", 1)[0].rstrip(",.;:") + "…"


def _conversation(row: tuple[Any, ...]) -> Conversation:
    conversation_id, title, model, settings, created, updated = row
    return Conversation(conversation_id, title, model, ChatSettings.model_validate(json.loads(settings)),
                        created, updated)
