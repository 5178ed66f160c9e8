"""The stored Responses (OpenAI's Responses API): each response object as it was sent, with the chat conversation
it ends with, so that a later request naming it as `previous_response_id` continues that conversation.

Writes are deferred to the store's background flush (saving never waits on SQLite); reads flush first, so a
response can be continued or fetched as soon as it has been answered. Only the newest `responses_kept` are kept.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.core.config import Config
from app.core.storage.store import Store


@dataclass(frozen=True, slots=True)
class StoredResponse:
    response: dict[str, Any]  # the response object, as the client was sent it
    conversation: list[dict[str, Any]]  # OpenAI chat messages, its answer last; never its instructions


class ResponseStore:
    """The `responses` table. `responses_kept` is read at each save, so a changed setting applies at once."""

    def __init__(self, store: Store, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._config = config
        self._clock = clock

    def save(self, response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        kept = self._config.responses_kept
        if kept == 0:
            return
        self._store.defer("INSERT OR REPLACE INTO responses (id, created, response, conversation) VALUES (?, ?, ?, ?)",
                          (response["id"], self._clock(), json.dumps(response), json.dumps(conversation)))
        # Walks the newest `kept` entries of the index: cheap, and in the flush thread, not the request's.
        self._store.defer("DELETE FROM responses WHERE id IN "
                          "(SELECT id FROM responses ORDER BY created DESC LIMIT -1 OFFSET ?)", (kept,))

    async def get(self, response_id: str) -> StoredResponse | None:
        return await asyncio.to_thread(self._get, response_id)

    async def delete(self, response_id: str) -> bool:
        """Forget a response; False when none has that id."""
        return await asyncio.to_thread(self._store.execute, "DELETE FROM responses WHERE id = ?", (response_id,)) > 0

    def _get(self, response_id: str) -> StoredResponse | None:
        rows = self._store.query("SELECT response, conversation FROM responses WHERE id = ?", (response_id,))
        if not rows:
            return None
        response, conversation = rows[0]
        return StoredResponse(json.loads(response), json.loads(conversation))
