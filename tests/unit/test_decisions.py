"""DecisionLog on a real Store: the capacity bound, order, completion merge and persistence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.core.observe.decisions import DecisionLog
from app.core.storage.store import Store
from tests.support.clock import TickingClock


def decide(log: DecisionLog, request_id: str, model_id: str = "m", **extra: Any) -> None:
    log.append(
        request_id,
        endpoint="/v1/chat/completions",
        model_id=model_id,
        strategy="least-loaded",
        reason=f"{model_id} has the fewest requests in flight",
        total_score=0.75,
        candidates=[{"key": model_id, "score": 0.75}, {"key": "other", "score": 0.25}],
        **extra,
    )


def finish(log: DecisionLog, request_id: str, status: int = 200, error: str | None = None) -> bool:
    return log.complete(
        request_id,
        status=status,
        prompt_tokens=12,
        completion_tokens=34,
        cached_tokens=8,
        ttft_ms=55.5,
        duration_ms=420.0,
        error=error,
    )


def test_newest_first_with_limit(store: Store) -> None:
    log = DecisionLog(store, clock=TickingClock())
    for i in range(5):
        decide(log, f"r{i}")
    assert [d["request_id"] for d in log.recent()] == ["r4", "r3", "r2", "r1", "r0"]
    assert [d["request_id"] for d in log.recent(2)] == ["r4", "r3"]
    assert log.recent(0) == []
    with pytest.raises(ValueError):
        log.recent(-1)


def test_entry_fields_and_completion_merge(store: Store) -> None:
    log = DecisionLog(store, clock=TickingClock())
    decide(log, "r1")
    pending = log.get("r1")
    assert pending is not None
    assert pending["time"] == 101.0
    assert pending["endpoint"] == "/v1/chat/completions"
    assert pending["strategy"] == "least-loaded"
    assert pending["total_score"] == 0.75
    assert pending["candidates"][1] == {"key": "other", "score": 0.25}
    assert pending["retried"] is False
    assert pending["status"] is None and pending["completed"] is None

    assert finish(log, "r1", status=502, error="worker crashed")
    done = log.get("r1")
    assert done is not None
    assert {k: done[k] for k in ("status", "prompt_tokens", "completion_tokens", "cached_tokens")} == {
        "status": 502,
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "cached_tokens": 8,
    }
    assert done["ttft_ms"] == 55.5 and done["duration_ms"] == 420.0 and done["error"] == "worker crashed"
    assert done["completed"] == 102.0
    assert done["reason"] == pending["reason"]  # the decision itself is kept
    assert not finish(log, "unknown")


def test_a_retry_appends_and_completes_the_newest(store: Store) -> None:
    log = DecisionLog(store, clock=TickingClock())
    decide(log, "r1", "first")
    decide(log, "r1", "second", retried=True)
    finish(log, "r1")
    newest, oldest = log.recent()
    assert newest["model_id"] == "second" and newest["retried"] and newest["status"] == 200
    assert oldest["model_id"] == "first" and oldest["status"] is None
    assert log.get("r1")["model_id"] == "second"  # type: ignore[index]


def test_results_are_copies(store: Store) -> None:
    log = DecisionLog(store)
    decide(log, "r1")
    got = log.get("r1")
    got["candidates"][0]["score"] = 99  # type: ignore[index]
    assert log.get("r1")["candidates"][0]["score"] == 0.75  # type: ignore[index]


def test_capacity_bound_in_memory_and_sqlite(store: Store) -> None:
    log = DecisionLog(store, capacity=10)
    for i in range(95):
        decide(log, f"r{i}")
    assert len(log) == 10
    assert [d["request_id"] for d in log.recent(1000)] == [f"r{i}" for i in range(94, 84, -1)]
    assert log.get("r84") is None
    assert not finish(log, "r0")
    (rows,) = store.query("SELECT COUNT(*) FROM decisions")[0]
    assert rows <= 10 + 1  # pruned every capacity // 10 appends


def test_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "sb.db"
    store = Store(path)
    log = DecisionLog(store, capacity=3, clock=TickingClock())
    for i in range(5):
        decide(log, f"r{i}")
    finish(log, "r3")
    before = log.recent()
    store.close()

    store = Store(path)
    again = DecisionLog(store, capacity=3)
    assert again.recent() == before
    assert [d["request_id"] for d in before] == ["r4", "r3", "r2"]
    assert again.get("r3")["status"] == 200  # type: ignore[index]
    decide(again, "r5")  # numbering carries on after the rows already there
    assert [d["request_id"] for d in again.recent()] == ["r5", "r4", "r3"]
    assert finish(again, "r4")
    store.close()

    store = Store(path)
    assert DecisionLog(store, capacity=3).get("r4")["status"] == 200  # type: ignore[index]
    store.close()


def test_candidates_with_odd_values_do_not_fail(store: Store) -> None:
    log = DecisionLog(store)
    log.append(
        "r1", endpoint="/v1/x", model_id="m", strategy="s", reason="r", total_score=None,
        candidates=[{"key": "m", "when": Path("/tmp")}],
    )  # fmt: skip
    assert log.get("r1")["candidates"] == [{"key": "m", "when": "/tmp"}]  # type: ignore[index]
