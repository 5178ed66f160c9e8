"""Health of each model, owned here alone: a circuit breaker per model, and the health each model shows and why.

The breaker and the book are pure: every method takes `now` (monotonic seconds) where time matters, so the router,
the checker (health_checker.py, the one part that touches asyncio and a clock) and the tests decide what time it is.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from app.core.runtime.local.handle import WorkerState

if TYPE_CHECKING:
    from app.core.routing.request import Finished

log = logging.getLogger(__name__)


class Health(str, Enum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


ChangeListener = Callable[[str, Health, str | None], None]  # model id, health, why


@dataclass(slots=True)
class BreakerConfig:
    failure_threshold: int = 3  # consecutive failures that open the breaker
    success_threshold: int = 2  # consecutive half-open successes that close it again
    cooldown_s: float = 30.0  # how long an open breaker refuses everything
    window_s: float = 300.0  # the sliding window for error rate and TTFT
    degraded_error_rate: float = 0.2
    degraded_min_requests: int = 10  # fewer results than this in the window never make a model degraded by errors
    degraded_ttft_s: float | None = None  # None: latency never degrades a model

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.success_threshold < 1:
            raise ValueError("failure_threshold and success_threshold must be at least 1")
        if self.cooldown_s < 0 or self.window_s <= 0:
            raise ValueError("cooldown_s must be >= 0 and window_s > 0")


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """closed --N consecutive failures--> open --cooldown--> half_open --M successes--> closed.

    A failure while half-open reopens it for another cooldown. Half-open lets one request (or probe) through at
    a time: `allow` claims that slot and the next `record_*` frees it. A claim whose result never comes back
    (a cancelled request) lapses after `cooldown_s`, so a lost probe cannot wedge the breaker half-open.
    """

    def __init__(self, config: BreakerConfig | None = None) -> None:
        self.config = config or BreakerConfig()
        self._state = BreakerState.CLOSED
        self._failures = 0  # consecutive, while closed
        self._successes = 0  # consecutive, while half-open
        self._opened_at = 0.0
        self._claimed_at: float | None = None  # the half-open slot's holder, since when
        self._reason: str | None = None
        self._seen_any = False
        # (time, ok, latency) per result inside the window, with running sums so health() is O(expired).
        self._window: deque[tuple[float, bool, float | None]] = deque()
        self._window_failures = 0
        self._latency_sum = 0.0
        self._latency_count = 0

    # -- results ---------------------------------------------------------------------------
    def record_success(self, now: float, latency_s: float | None = None) -> None:
        state = self.state(now)
        self._push(now, True, latency_s)
        if state is BreakerState.CLOSED:
            self._failures = 0
        elif state is BreakerState.HALF_OPEN:
            self._claimed_at = None
            self._successes += 1
            if self._successes >= self.config.success_threshold:
                self._state = BreakerState.CLOSED
                self._failures = 0
                self._reason = None
        # While open, a late success (sent before the breaker opened) proves nothing about recovery.

    def record_failure(self, now: float, reason: str | None = None) -> None:
        state = self.state(now)
        self._push(now, False, None)
        self._reason = reason or "request failed"
        if state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.config.failure_threshold:
                self._open(now)
        else:
            # Half-open: the probe failed. Open: still failing, so the cooldown starts over.
            self._open(now)

    # -- questions -------------------------------------------------------------------------
    def state(self, now: float) -> BreakerState:
        if self._state is BreakerState.OPEN and now - self._opened_at >= self.config.cooldown_s:
            self._state = BreakerState.HALF_OPEN
            self._successes = 0
            self._claimed_at = None
        return self._state

    def allow(self, now: float, *, claim: bool = True) -> bool:
        """May a request or probe go there now? In half-open, True claims the single slot unless `claim` is False."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        if self._claimed_at is not None and now - self._claimed_at < self.config.cooldown_s:
            return False
        if claim:
            self._claimed_at = now
        return True

    def health(self, now: float) -> Health:
        if not self._seen_any:
            return Health.UNKNOWN
        if self.state(now) is not BreakerState.CLOSED:
            # Half-open is still unproven: it stays unhealthy until it closes.
            return Health.UNHEALTHY
        return Health.DEGRADED if self._degradation(now) else Health.HEALTHY

    def explain(self, now: float) -> str | None:
        """One sentence for a user about the current health; None when there is nothing to say."""
        health = self.health(now)
        if health is Health.UNHEALTHY:
            return self._reason
        if health is Health.DEGRADED:
            return self._degradation(now)
        return None

    @property
    def reason(self) -> str | None:
        """The last failure's reason; cleared when the breaker closes after a recovery."""
        return self._reason

    def retry_in(self, now: float) -> float:
        """Seconds until `allow` may say yes (0 when it already does)."""
        state = self.state(now)
        if state is BreakerState.OPEN:
            return max(0.0, self._opened_at + self.config.cooldown_s - now)
        if state is BreakerState.HALF_OPEN and self._claimed_at is not None:
            return max(0.0, self._claimed_at + self.config.cooldown_s - now)
        return 0.0

    # -- internals -------------------------------------------------------------------------
    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._claimed_at = None
        self._successes = 0

    def _push(self, now: float, ok: bool, latency_s: float | None) -> None:
        self._seen_any = True
        self._window.append((now, ok, latency_s))
        if not ok:
            self._window_failures += 1
        if latency_s is not None:
            self._latency_sum += latency_s
            self._latency_count += 1
        self._expire(now)

    def _expire(self, now: float) -> None:
        horizon = now - self.config.window_s
        window = self._window
        while window and window[0][0] <= horizon:
            _, ok, latency = window.popleft()
            if not ok:
                self._window_failures -= 1
            if latency is not None:
                self._latency_sum -= latency
                self._latency_count -= 1
        if self._latency_count == 0:
            self._latency_sum = 0.0  # drop accumulated float error whenever the window empties

    def _degradation(self, now: float) -> str | None:
        """Why the window says degraded, or None."""
        self._expire(now)
        cfg = self.config
        total = len(self._window)
        if total >= cfg.degraded_min_requests and total and self._window_failures / total >= cfg.degraded_error_rate:
            return f"{self._window_failures} of the last {total} requests failed"
        if cfg.degraded_ttft_s is not None and self._latency_count:
            mean = self._latency_sum / self._latency_count
            if mean > cfg.degraded_ttft_s:
                return f"slow: mean time to first token {mean:.2f} s (limit {cfg.degraded_ttft_s:g} s)"
        return None


_NOTHING_KNOWN: tuple[Health, str | None] = (Health.UNKNOWN, None)
_GONE = frozenset({WorkerState.STOPPED, WorkerState.FAILED})


class HealthBook:
    """Every model's health: its circuit breaker (what routing gates on) and the health it shows, with why (what
    the API, the window and /metrics read). What a model shows follows these rules, and nothing else writes it:

    - its worker became ready: healthy; a worker failed (a load that failed, a crash): unhealthy, with the reason;
      the last of its workers stopped as asked: unknown;
    - a request's result: the breaker's health, except that one failure while the breaker is still healthy never
      hides a worse fact (a crashed worker stays unhealthy until something succeeds);
    - the HealthChecker's changes, as they come (`show`).

    Listeners hear (model_id, health, reason) whenever what a model shows changes. Breakers are made on first use;
    a model never seen is unknown and allowed.
    """

    def __init__(self, config: BreakerConfig | None = None) -> None:
        self.config = config or BreakerConfig()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._shown: dict[str, tuple[Health, str | None]] = {}
        # Per model, the replicas whose workers are starting, ready or stopping: "the last one stopped" needs them.
        self._workers: dict[str, dict[int, WorkerState]] = {}
        self._listeners: list[ChangeListener] = []

    # -- what a model shows ----------------------------------------------------------------
    def shown(self, model_id: str) -> tuple[Health, str | None]:
        return self._shown.get(model_id, _NOTHING_KNOWN)

    def show(self, model_id: str, health: Health, reason: str | None = None) -> None:
        """Show `health` and why; listeners hear of it when that differs from what the model showed."""
        if self.shown(model_id) == (health, reason):
            return
        self._shown[model_id] = (health, reason)
        for listener in list(self._listeners):
            listener(model_id, health, reason)

    def worker_changed(self, model_id: str, replica: int, state: WorkerState, reason: str | None = None,
                       *, now: float | None = None) -> None:
        """A worker of the model entered `state` (the pool reports every step); `reason` says why one failed.

        A worker that fails once ready has crashed: one failure for the breaker (at `now`), however many requests
        it was decoding (theirs do not count again)."""
        live = self._workers.setdefault(model_id, {})
        if state is WorkerState.FAILED and live.get(replica) is WorkerState.READY and now is not None:
            self.breaker(model_id).record_failure(now, reason)
        if state in _GONE:
            live.pop(replica, None)
        else:
            live[replica] = state
        if not live:
            del self._workers[model_id]
        if state is WorkerState.READY:
            self.show(model_id, Health.HEALTHY)
        elif state is WorkerState.FAILED:
            self.show(model_id, Health.UNHEALTHY, reason)
        elif state is WorkerState.STOPPED and not live:
            self.show(model_id, Health.UNKNOWN)

    def record_request(self, model_id: str, ok: bool, now: float, *, latency_s: float | None = None,
                       reason: str | None = None) -> Health:
        """A request's result: into the breaker, then shown by the rules above. Returns the breaker's health,
        which is never unknown once it has a result, so unknown never overwrites what a model shows."""
        health = self.record(model_id, ok, now, latency_s=latency_s, reason=reason)
        if ok or health is not Health.HEALTHY:
            self.show(model_id, health, self.reason(model_id))
        return health

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Hear every change of what a model shows; returns the unsubscriber."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # -- the breakers ----------------------------------------------------------------------

    def breaker(self, model_id: str) -> CircuitBreaker:
        breaker = self._breakers.get(model_id)
        if breaker is None:
            breaker = self._breakers[model_id] = CircuitBreaker(self.config)
        return breaker

    def on_finished(self, finished: Finished) -> None:
        """A request's result counts when it says something about the model: a success, or the model's own
        failure (5xx). A request's own fault (4xx) and a client that went away (499) say nothing about it."""
        outcome = finished.outcome
        if outcome.ok or (finished.status >= 500 and not outcome.crashed):
            self.record_request(finished.decision.model_id, outcome.ok, finished.ended_at,
                                latency_s=outcome.ttft_s, reason=outcome.error)

    def record(self, model_id: str, ok: bool, now: float, *, latency_s: float | None = None,
               reason: str | None = None) -> Health:
        breaker = self.breaker(model_id)
        if ok:
            breaker.record_success(now, latency_s)
        else:
            breaker.record_failure(now, reason)
        return breaker.health(now)

    def allow(self, model_id: str, now: float, *, claim: bool = True) -> bool:
        breaker = self._breakers.get(model_id)
        return True if breaker is None else breaker.allow(now, claim=claim)

    def health(self, model_id: str, now: float) -> Health:
        breaker = self._breakers.get(model_id)
        return Health.UNKNOWN if breaker is None else breaker.health(now)

    def explain(self, model_id: str, now: float) -> str | None:
        breaker = self._breakers.get(model_id)
        return None if breaker is None else breaker.explain(now)

    def reason(self, model_id: str) -> str | None:
        breaker = self._breakers.get(model_id)
        return None if breaker is None else breaker.reason

    def retry_in(self, model_id: str, now: float) -> float:
        breaker = self._breakers.get(model_id)
        return 0.0 if breaker is None else breaker.retry_in(now)

    def forget(self, model_id: str) -> None:
        """Drop all the book knows of the model (it left the catalog); listeners are not told."""
        self._breakers.pop(model_id, None)
        self._shown.pop(model_id, None)
        self._workers.pop(model_id, None)

    def models(self) -> list[str]:
        return list(self._breakers)
