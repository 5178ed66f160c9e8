"""The window's chats: conversations kept in the store, and each question answered through the engine as one Job
(surface "window"), so routing, quotas, health, decisions and metrics apply to them as to the API's requests.

    reply = await services.chats.send(conversation.id, "What is the capital of France?", settings)
    async for piece in reply:        # the answer's text as it is generated
        ...
    reply.facts                      # the model that served it, why, its TTFT and tokens/s

Leaving the iteration early (or cancelling the task iterating it) closes the Job's stream, which stops the
generation in the worker; what was said until then is kept, marked stopped.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from app.core.catalog.capabilities import CHAT
from app.core.conversations import (
    NEW_TITLE,
    AnswerFacts,
    ChatSettings,
    Conversation,
    Conversations,
    Message,
    title_from,
)
from app.core.engine import Engine
from app.core.errors import SwitchboardError
from app.core.job import Job
from app.core.routing.needs import translate
from app.core.routing.request import AUTO, RouteRequest, RoutingDecision
from app.core.routing.strategies.params import ParamField, fields

__all__ = ["AnswerFacts", "ChatSettings", "Chats", "Conversation", "Message", "Reply"]

SURFACE = "window"


class Reply:
    """One answer being generated: iterate it (once) for its text's pieces; `facts` once it has ended."""

    def __init__(self, job: Job, conversations: Conversations, conversation_id: str, started: float) -> None:
        self._job = job
        self._conversations = conversations
        self._conversation_id = conversation_id
        self._started = started
        self.facts: AnswerFacts | None = None

    @property
    def decision(self) -> RoutingDecision:
        """Where it went and why, known before its first piece."""
        return self._job.decision

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[str]:
        pieces: list[str] = []
        first: float | None = None
        finish = "stopped"  # unless the stream ends, or fails
        completion_tokens: int | None = None
        try:
            async with contextlib.aclosing(self._job.stream()) as messages:  # type: ignore[type-var]
                async for message in messages:
                    if message["type"] == "chunk":
                        choice = (message["data"].get("choices") or [{}])[0]
                        finish = choice.get("finish_reason") or finish
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            first = first or time.monotonic()
                            pieces.append(piece)
                            yield piece
                    elif message["type"] == "done":
                        completion_tokens = (message.get("usage") or {}).get("completion_tokens")
                        finish = finish if finish != "stopped" else "stop"
        except SwitchboardError:
            finish = "error"
            raise
        finally:
            self.facts = self._facts(first, completion_tokens or len(pieces), finish)
            if pieces:
                self._conversations.add(self._conversation_id, "assistant", "".join(pieces), self.facts)

    def _facts(self, first: float | None, tokens: int, finish: str) -> AnswerFacts:
        # Tokens/s counts the decode alone: the tokens after the first, over the time since the first.
        span = time.monotonic() - first if first is not None else 0.0
        decision = self._job.decision
        return AnswerFacts(
            model_id=decision.model_id, reason=decision.reason, strategy=decision.strategy,
            ttft_s=None if first is None else first - self._started,
            tokens_per_s=(tokens - 1) / span if tokens > 1 and span > 0 else None,
            completion_tokens=tokens, finish=finish)


class Chats:
    """List, create, rename and delete conversations; send a question and get its Reply."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conversations = Conversations(engine.store)

    def all(self) -> list[Conversation]:
        """Every conversation, the most recently used first."""
        return self._conversations.all()

    def get(self, conversation_id: str) -> Conversation:
        return self._conversations.get(conversation_id)

    def messages(self, conversation_id: str) -> list[Message]:
        return self._conversations.messages(conversation_id)

    def create(self, model: str = AUTO, settings: ChatSettings | None = None) -> Conversation:
        return self._conversations.create(model=model, settings=settings)

    def rename(self, conversation_id: str, title: str) -> Conversation:
        return self._conversations.rename(conversation_id, " ".join(title.split()) or NEW_TITLE)

    def configure(self, conversation_id: str, model: str, settings: ChatSettings) -> Conversation:
        return self._conversations.configure(conversation_id, model, settings)

    def delete(self, conversation_id: str) -> None:
        self._conversations.delete(conversation_id)

    def settings_fields(self) -> list[ParamField]:
        """The settings' fields, in order, for the window's form."""
        return fields(ChatSettings)

    def models(self) -> list[tuple[str, str]]:
        """What a conversation may ask, as (model, label): `auto` (the routing strategy picks) first, then every
        served chat model by its readable name."""
        strategy = self._engine.router.strategy.name.replace("_", " ")
        choices = [(AUTO, f"Auto (routed: {strategy})")]
        for entry in self._engine.registry.list():
            if entry.enabled and not entry.missing and CHAT in entry.capabilities:
                choices.append((entry.id, f"{entry.display_name or entry.name} · {entry.tag}"))
        return choices

    async def send(self, conversation_id: str, text: str, settings: ChatSettings, *,
                   model: str | None = None) -> Reply:
        """Ask `text` in the conversation (with `settings`, and `model`, else the conversation's own, both kept
        for it); the Reply streams the answer. Its first message has arrived when this returns: a model that
        cannot serve raises here (the core's errors), and the question is recorded only once it is being answered.
        """
        conversation = self._conversations.get(conversation_id)
        model = model or conversation.model
        if (model, settings) != (conversation.model, conversation.settings):
            self._conversations.configure(conversation_id, model, settings)
        history = self._conversations.messages(conversation_id)
        messages = _chat_messages(settings, history, text)
        request = RouteRequest("chat", model, (), translate("chat", {"messages": messages}),
                               session_key=conversation_id, request_id=uuid.uuid4().hex, surface=SURFACE)
        started = time.monotonic()
        job = await self._engine.open(request, "chat", {**settings.sampling(), "messages": messages})
        self._conversations.add(conversation_id, "user", text)
        if conversation.title == NEW_TITLE and not history:
            self._conversations.rename(conversation_id, title_from(text))
        return Reply(job, self._conversations, conversation_id, started)


def _chat_messages(settings: ChatSettings, history: list[Message], text: str) -> list[dict[str, Any]]:
    """The chat request's messages: the system prompt, the conversation so far, the new question."""
    system = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt.strip() else []
    earlier = [{"role": m.role, "content": m.content} for m in history]
    return [*system, *earlier, {"role": "user", "content": text}]
