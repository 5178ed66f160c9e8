"""ResponseStore on a real Store: read back at once, the retention bound, deletion, and persistence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.core.config import Config
from app.core.responses import ResponseStore
from app.core.storage.store import Store
from tests.support.clock import TickingClock


def response(response_id: str) -> dict[str, Any]:
    return {"id": response_id, "object": "response", "status": "completed", "output": []}


def conversation(answer: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "Say something."}, {"role": "assistant", "content": answer}]


async def test_a_saved_response_reads_back_before_any_flush(store: Store) -> None:
    responses = ResponseStore(store, Config(responses_kept=10))
    responses.save(response("resp_1"), conversation("one"))
    stored = await responses.get("resp_1")
    assert stored is not None
    assert stored.response == response("resp_1")
    assert stored.conversation == conversation("one")
    assert await responses.get("resp_unknown") is None


async def test_only_the_newest_are_kept(store: Store) -> None:
    responses = ResponseStore(store, Config(responses_kept=3), clock=TickingClock())
    for n in range(5):
        responses.save(response(f"resp_{n}"), conversation(str(n)))
    kept = [n for n in range(5) if await responses.get(f"resp_{n}") is not None]
    assert kept == [2, 3, 4]
    assert store.query("SELECT COUNT(*) FROM responses") == [(3,)]


async def test_keeping_none_stores_nothing(store: Store) -> None:
    responses = ResponseStore(store, Config(responses_kept=0))
    responses.save(response("resp_1"), conversation("one"))
    assert await responses.get("resp_1") is None
    assert store.query("SELECT COUNT(*) FROM responses") == [(0,)]


async def test_delete_forgets_one_response(store: Store) -> None:
    responses = ResponseStore(store, Config(responses_kept=10), clock=TickingClock())
    responses.save(response("resp_1"), conversation("one"))
    responses.save(response("resp_2"), conversation("two"))
    assert await responses.delete("resp_1") is True
    assert await responses.get("resp_1") is None
    assert await responses.get("resp_2") is not None
    assert await responses.delete("resp_1") is False


async def test_responses_survive_a_restart(tmp_path: Path) -> None:
    first = Store(tmp_path / "sb.db")
    ResponseStore(first, Config(responses_kept=10)).save(response("resp_1"), conversation("one"))
    first.close()
    again = Store(tmp_path / "sb.db")
    try:
        stored = await ResponseStore(again, Config(responses_kept=10)).get("resp_1")
        assert stored is not None and stored.conversation == conversation("one")
    finally:
        again.close()
