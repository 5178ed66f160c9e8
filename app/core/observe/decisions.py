"""The routing decision log: why each recent request went where it went, and how it ended.

The last `capacity` decisions are mirrored in memory, so reads never touch SQLite and `complete` updates its
row by primary key. SQLite keeps them across restarts and is pruned once every `capacity // 10` appends.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app.core.storage.store import Store

if TYPE_CHECKING:
    from app.core.routing.request import Finished

_COLUMNS = (
    "seq", "time", "request_id", "endpoint", "surface", "model_id", "strategy", "reason", "total_score", "candidates",
    "retried", "status", "prompt_tokens", "completion_tokens", "cached_tokens", "ttft_ms", "duration_ms", "error",
    "completed",
)  # fmt: skip
_COMPLETION = ("status", "prompt_tokens", "completion_tokens", "cached_tokens", "ttft_ms", "duration_ms", "error")


class DecisionLog:
    def __init__(self, store: Store, *, capacity: int = 1000, clock: Callable[[], float] = time.time) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 (got {capacity!r})")
        self._store = store
        self._clock = clock
        self.capacity = capacity
        self._prune_every = max(1, capacity // 10)
        self._lock = threading.Lock()
        self._rows: OrderedDict[int, dict[str, Any]] = OrderedDict()  # seq -> row, oldest first
        self._latest: dict[str, int] = {}  # request id -> seq of its newest decision (a retry appends another)
        rows = store.query(
            f"SELECT {', '.join(_COLUMNS)} FROM decisions ORDER BY seq DESC LIMIT ?", (capacity,)
        )
        for values in reversed(rows):
            row = dict(zip(_COLUMNS, values))
            row["candidates"] = json.loads(row["candidates"])
            row["retried"] = bool(row["retried"])
            self._remember(row)
        (last,) = store.query("SELECT COALESCE(MAX(seq), 0) FROM decisions")[0]
        # We number rows ourselves (the store does not return lastrowid) so `complete` can update by key.
        self._next_seq = int(last) + 1
        self._appends = 0

    def append(
        self,
        request_id: str,
        *,
        endpoint: str,
        surface: str = "openai",
        model_id: str,
        strategy: str,
        reason: str,
        total_score: float | None,
        candidates: list[dict[str, Any]],
        retried: bool = False,
    ) -> None:
        # default=str: a stray non-JSON value in a candidate must not fail the request it describes.
        candidates_json = json.dumps(candidates, default=str)
        row: dict[str, Any] = {
            "time": self._clock(),
            "request_id": request_id,
            "endpoint": endpoint,
            "surface": surface,
            "model_id": model_id,
            "strategy": strategy,
            "reason": reason,
            "total_score": None if total_score is None else float(total_score),
            "candidates": json.loads(candidates_json),  # exactly what a restart would read back
            "retried": bool(retried),
            **dict.fromkeys(_COMPLETION),
            "completed": None,
        }
        with self._lock:
            row["seq"] = seq = self._next_seq
            self._next_seq += 1
            self._remember(row)
            self._appends += 1
            prune = self._appends % self._prune_every == 0
            # Queued under our lock so a `complete` from another thread cannot overtake the INSERT.
            self._store.defer(
                "INSERT INTO decisions (seq, time, request_id, endpoint, surface, model_id, strategy, reason, "
                "total_score, candidates, retried) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, row["time"], request_id, endpoint, surface, model_id, strategy, reason, row["total_score"],
                 candidates_json, int(retried)),
            )  # fmt: skip
        if prune:
            self._store.defer("DELETE FROM decisions WHERE seq <= ?", (seq - self.capacity,))

    def on_finished(self, finished: Finished) -> None:
        o = finished.outcome
        self.complete(finished.request.request_id, status=finished.status, prompt_tokens=o.prompt_tokens,
                      completion_tokens=o.completion_tokens, cached_tokens=o.cached_tokens,
                      ttft_ms=None if o.ttft_s is None else o.ttft_s * 1000, duration_ms=o.duration_s * 1000,
                      error=o.error)

    def complete(
        self,
        request_id: str,
        *,
        status: int,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int,
        ttft_ms: float | None,
        duration_ms: float,
        error: str | None = None,
    ) -> bool:
        """Fill in how the request's newest decision ended; False if it is no longer in the log."""
        values = {
            "status": status,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cached_tokens": cached_tokens,
            "ttft_ms": ttft_ms,
            "duration_ms": duration_ms,
            "error": error,
            "completed": self._clock(),
        }
        with self._lock:
            seq = self._latest.get(request_id)
            if seq is None:
                return False
            self._rows[seq].update(values)
            self._store.defer(
                f"UPDATE decisions SET {', '.join(f'{k} = ?' for k in values)} WHERE seq = ?",
                (*values.values(), seq),
            )
        return True

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """Up to `limit` decisions, newest first."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0 (got {limit!r})")
        out: list[dict[str, Any]] = []
        with self._lock:
            for row in reversed(self._rows.values()):
                if len(out) >= limit:
                    break
                out.append(self._copy(row))
        return out

    def get(self, request_id: str) -> dict[str, Any] | None:
        """The request's newest decision, or None."""
        with self._lock:
            seq = self._latest.get(request_id)
            return None if seq is None else self._copy(self._rows[seq])

    def __len__(self) -> int:
        return len(self._rows)

    def _remember(self, row: dict[str, Any]) -> None:
        """Add a row to the in-memory mirror, dropping the oldest beyond capacity. Caller holds the lock."""
        self._rows[row["seq"]] = row
        self._latest[row["request_id"]] = row["seq"]
        while len(self._rows) > self.capacity:
            seq, old = self._rows.popitem(last=False)
            if self._latest.get(old["request_id"]) == seq:
                del self._latest[old["request_id"]]

    @staticmethod
    def _copy(row: dict[str, Any]) -> dict[str, Any]:
        # Copies down to the candidates so a caller cannot change the log through the result.
        return {**row, "candidates": [dict(c) if isinstance(c, dict) else c for c in row["candidates"]]}
