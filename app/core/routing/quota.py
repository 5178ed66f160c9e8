"""Hourly token and request quotas per model and per API key, over a sliding window that survives restarts.

Usage is kept in `BUCKETS` equal time buckets per scope (per minute for the default hour): memory stays
bounded whatever the traffic, and the window slides one bucket at a time. Every read is answered from memory;
each `record` makes one small SQLite write so that a restart does not hand out a fresh hour.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.core.errors import InvalidValue
from app.core.storage.store import Store

if TYPE_CHECKING:
    from app.core.routing.request import Finished

BUCKETS = 60  # buckets per window: per minute for an hour

_UPSERT = (
    "INSERT INTO quota_usage (scope, start, requests, tokens) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(scope, start) DO UPDATE SET requests = requests + excluded.requests, "
    "tokens = tokens + excluded.tokens"
)


# The largest limit: SQLite's largest INTEGER, the type limits are stored as.
MAX_LIMIT = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-window limits; None means unlimited. The names say "per hour" because the window is an hour."""

    tokens_per_hour: int | None = None
    requests_per_hour: int | None = None

    def __post_init__(self) -> None:
        for name in ("tokens_per_hour", "requests_per_hour"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
                raise InvalidValue(f"{name} must be a positive integer up to {MAX_LIMIT} or null (got {value!r})")

    @property
    def empty(self) -> bool:
        return self.tokens_per_hour is None and self.requests_per_hour is None

    def as_dict(self) -> dict[str, int | None]:
        return {"tokens_per_hour": self.tokens_per_hour, "requests_per_hour": self.requests_per_hour}


def model_scope(model_id: str) -> str:
    return f"model:{model_id}"


def key_scope(api_key_id: str) -> str:
    return f"key:{api_key_id}"


def _check_scope(scope: str) -> None:
    kind, sep, rest = scope.partition(":")
    if not sep or kind not in ("model", "key") or not rest:
        raise InvalidValue(f"quota scope must be 'model:<id>' or 'key:<key name>' (got {scope!r})")


class _Usage:
    """One scope's buckets, oldest first, with running totals so reads never sum."""

    __slots__ = ("buckets", "requests", "tokens")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()  # [bucket index, requests, tokens]
        self.requests = 0
        self.tokens = 0

    def add(self, index: int, requests: int, tokens: int) -> None:
        # Buckets arrive in time order except when loading, which sorts first; a late clock step back
        # still lands in the newest bucket rather than breaking the order.
        if self.buckets and self.buckets[-1][0] >= index:
            bucket = self.buckets[-1]
            bucket[1] += requests
            bucket[2] += tokens
        else:
            self.buckets.append([index, requests, tokens])
        self.requests += requests
        self.tokens += tokens

    def prune(self, oldest: int) -> None:
        """Drop buckets with an index below `oldest`."""
        while self.buckets and self.buckets[0][0] < oldest:
            _, requests, tokens = self.buckets.popleft()
            self.requests -= requests
            self.tokens -= tokens


class QuotaManager:
    def __init__(self, store: Store, *, window_s: float = 3600.0, clock: Callable[[], float] = time.time) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be positive (got {window_s!r})")
        self._store = store
        self._clock = clock
        self.window_s = float(window_s)
        self._bucket_s = self.window_s / BUCKETS
        self._lock = threading.Lock()
        self._usage: dict[str, _Usage] = {}
        self._limits: dict[str, Limits] = {}
        self._pruned_below: float = -math.inf  # the oldest live bucket index when SQLite was last pruned
        rows = store.query("SELECT scope, tokens_per_hour, requests_per_hour FROM quota_limits")
        for scope, tokens, requests in rows:
            self._limits[scope] = Limits(tokens, requests)
        self._load()

    # --- limits ---

    def set_limits(self, scope: str, limits: Limits) -> None:
        """Set (or, with an empty Limits(), clear) the limits of one scope."""
        _check_scope(scope)
        if limits.empty:
            self._store.execute("DELETE FROM quota_limits WHERE scope = ?", (scope,))
            with self._lock:
                self._limits.pop(scope, None)
            return
        self._store.execute(
            "INSERT INTO quota_limits (scope, tokens_per_hour, requests_per_hour) VALUES (?, ?, ?) "
            "ON CONFLICT(scope) DO UPDATE SET tokens_per_hour = excluded.tokens_per_hour, "
            "requests_per_hour = excluded.requests_per_hour",
            (scope, limits.tokens_per_hour, limits.requests_per_hour),
        )
        with self._lock:
            self._limits[scope] = limits

    def limits(self, scope: str) -> Limits:
        return self._limits.get(scope, Limits())

    # --- the request path ---

    def on_finished(self, finished: Finished) -> None:
        outcome = finished.outcome
        self.record(finished.decision.model_id, finished.request.api_key_id,
                    outcome.prompt_tokens + outcome.completion_tokens)

    def record(self, model_id: str, api_key_id: str | None, tokens: int) -> None:
        """Count one request and its tokens against the model's scope and, when given, the key's."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"tokens must be a non-negative integer (got {tokens!r})")
        now = self._clock()
        index = self._index(now)
        scopes = self._scopes(model_id, api_key_id)
        with self._lock:
            oldest = self._oldest(now)
            for scope in scopes:
                usage = self._usage.get(scope)
                if usage is None:
                    usage = self._usage[scope] = _Usage()
                usage.prune(oldest)
                usage.add(index, 1, tokens)
            prune_db = oldest > self._pruned_below
            if prune_db:
                self._pruned_below = oldest
        start = index * self._bucket_s
        for scope in scopes:  # written by the store's background flush, off the request path
            self._store.defer(_UPSERT, (scope, start, 1, tokens))
        if prune_db:
            # At most once per bucket: the table never holds more than a window of buckets per scope.
            self._store.defer("DELETE FROM quota_usage WHERE start < ?", (self._cutoff(oldest),))

    def remaining_fraction(self, model_id: str, api_key_id: str | None = None) -> float:
        """0..1: the least that is left of any limit on the model or the key; 1.0 without limits."""
        left = 1.0
        for _, used, limit in self._constraints(model_id, api_key_id):
            left = min(left, max(0.0, 1.0 - used / limit))
        return left

    def exhausted(self, model_id: str, api_key_id: str | None = None) -> bool:
        return any(used >= limit for _, used, limit in self._constraints(model_id, api_key_id))

    def retry_after(self, model_id: str, api_key_id: str | None = None) -> float:
        """Seconds until every exhausted limit lets one more request through; 0.0 when none is exhausted."""
        now = self._clock()
        until = now
        with self._lock:
            oldest = self._oldest(now)
            for scope in self._scopes(model_id, api_key_id):
                usage = self._usage.get(scope)
                limits = self._limits.get(scope)
                if usage is None or limits is None:
                    continue
                usage.prune(oldest)
                for column, used, limit in self._kinds(usage, limits):
                    if used < limit:
                        continue
                    # Walk the buckets oldest first: each leaves the window at its start + window_s.
                    for bucket in usage.buckets:
                        used -= bucket[column]
                        if used < limit:
                            until = max(until, (bucket[0] + BUCKETS) * self._bucket_s)
                            break
        return max(0.0, until - now)

    # --- reporting ---

    def usage(self, scope: str) -> dict[str, Any]:
        _check_scope(scope)
        now = self._clock()
        with self._lock:
            usage = self._usage.get(scope)
            if usage is not None:
                usage.prune(self._oldest(now))
            requests = usage.requests if usage else 0
            tokens = usage.tokens if usage else 0
            limits = self._limits.get(scope, Limits())
        left = 1.0
        for used, limit in ((tokens, limits.tokens_per_hour), (requests, limits.requests_per_hour)):
            if limit is not None:
                left = min(left, max(0.0, 1.0 - used / limit))
        return {
            "scope": scope,
            "requests": requests,
            "tokens": tokens,
            "limits": limits.as_dict(),
            "window_s": self.window_s,
            "remaining": left,
        }

    def all_usage(self) -> dict[str, dict[str, Any]]:
        """Every scope with limits or with usage in the window."""
        with self._lock:
            scopes = sorted(set(self._usage) | set(self._limits))
        report = {scope: self.usage(scope) for scope in scopes}
        return {s: u for s, u in report.items() if u["requests"] or not self.limits(s).empty}

    # --- internals ---

    def _index(self, t: float) -> int:
        return math.floor(t / self._bucket_s)

    def _oldest(self, now: float) -> int:
        """The oldest bucket index still inside the window at `now`."""
        return self._index(now) - BUCKETS + 1

    def _cutoff(self, oldest: int) -> float:
        # Half a bucket of slack so float rounding of stored starts never drops a live bucket.
        return (oldest - 0.5) * self._bucket_s

    @staticmethod
    def _scopes(model_id: str, api_key_id: str | None) -> list[str]:
        scopes = [model_scope(model_id)]
        if api_key_id is not None:
            scopes.append(key_scope(api_key_id))
        return scopes

    @staticmethod
    def _kinds(usage: _Usage, limits: Limits) -> Iterable[tuple[int, int, int]]:
        """(bucket column, used, limit) for each limit that is set."""
        if limits.requests_per_hour is not None:
            yield 1, usage.requests, limits.requests_per_hour
        if limits.tokens_per_hour is not None:
            yield 2, usage.tokens, limits.tokens_per_hour

    def _constraints(self, model_id: str, api_key_id: str | None) -> list[tuple[int, int, int]]:
        now = self._clock()
        out: list[tuple[int, int, int]] = []
        with self._lock:
            oldest = self._oldest(now)
            for scope in self._scopes(model_id, api_key_id):
                limits = self._limits.get(scope)
                if limits is None:
                    continue
                usage = self._usage.get(scope) or _Usage()
                usage.prune(oldest)
                out.extend(self._kinds(usage, limits))
        return out

    def _load(self) -> None:
        oldest = self._oldest(self._clock())
        cutoff = self._cutoff(oldest)
        self._store.execute("DELETE FROM quota_usage WHERE start < ?", (cutoff,))
        rows = self._store.query(
            "SELECT scope, start, requests, tokens FROM quota_usage WHERE start >= ? ORDER BY scope, start",
            (cutoff,),
        )
        for scope, start, requests, tokens in rows:
            # round(): stored starts are exact multiples of the bucket width up to float error.
            index = round(start / self._bucket_s)
            if index >= oldest:
                self._usage.setdefault(scope, _Usage()).add(index, requests, tokens)
        self._pruned_below = oldest
