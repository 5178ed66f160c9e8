"""Health of each model: a circuit breaker per model, and an async checker that probes them.

The breaker and the book are pure: every method takes `now` (monotonic seconds), so the router, the checker and
the tests decide what time it is. Only `HealthChecker` touches asyncio and a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from app.core.catalog.registry import Health

log = logging.getLogger(__name__)

ProbeResult = tuple[bool, float, str | None]  # ok, latency in seconds, failure reason
Probe = Callable[[], Awaitable[ProbeResult]]
ChangeListener = Callable[[str, Health, str | None], None]


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


class HealthBook:
    """One breaker per model id, created on first use. Models never seen are UNKNOWN and allowed."""

    def __init__(self, config: BreakerConfig | None = None) -> None:
        self.config = config or BreakerConfig()
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, model_id: str) -> CircuitBreaker:
        breaker = self._breakers.get(model_id)
        if breaker is None:
            breaker = self._breakers[model_id] = CircuitBreaker(self.config)
        return breaker

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
        self._breakers.pop(model_id, None)

    def models(self) -> list[str]:
        return list(self._breakers)


class HealthChecker:
    """Probes every model on an interval and feeds the results to a HealthBook.

    `probes()` is asked each round, so the set of probed models follows whatever the caller serves (e.g. the
    loaded workers). A probe returns (ok, latency_s, reason); one that raises or outlasts `timeout_s` counts as a
    failure with the exception's text. The latency counts as a TTFT sample, so a probe should be a tiny
    generation if `degraded_ttft_s` is set. Models whose breaker is open are probed only when `allow` says so.
    `on_change(model_id, health, explanation)` is called whenever a model's health differs from the last seen.
    """

    def __init__(self, book: HealthBook, probes: Callable[[], Mapping[str, Probe]], *, interval_s: float = 15.0,
                 on_change: ChangeListener, clock: Callable[[], float] = time.monotonic,
                 timeout_s: float = 10.0) -> None:
        self.book = book
        self._probes = probes
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._on_change = on_change
        self._clock = clock
        self._last: dict[str, Health] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="health-checker")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def check_once(self) -> dict[str, Health]:
        """Probe every model the breaker allows, concurrently; returns the health of every model asked about."""
        probes = dict(self._probes())
        now = self._clock()
        due = {model_id: probe for model_id, probe in probes.items() if self.book.allow(model_id, now)}
        results = await asyncio.gather(*(self._probe(probe) for probe in due.values()))
        now = self._clock()
        for model_id, (ok, latency, reason) in zip(due, results):
            self.book.record(model_id, ok, now, latency_s=latency if ok else None, reason=reason)
        for gone in self._last.keys() - probes.keys():
            del self._last[gone]
        # Every model is compared, probed or not: an open breaker or an aging window changes health too.
        current = {model_id: self.book.health(model_id, now) for model_id in probes}
        for model_id, health in current.items():
            if self._last.get(model_id, Health.UNKNOWN) is not health:
                self._last[model_id] = health
                self._notify(model_id, health, self.book.explain(model_id, now))
        return current

    async def _probe(self, probe: Probe) -> ProbeResult:
        try:
            ok, latency, reason = await asyncio.wait_for(probe(), self.timeout_s)
        except asyncio.TimeoutError:
            return False, self.timeout_s, f"health probe timed out after {self.timeout_s:g} s"
        except Exception as exc:  # noqa: BLE001 - any probe error is a failed check, never a dead checker
            return False, 0.0, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return bool(ok), float(latency), None if ok else (reason or "health probe failed")

    def _notify(self, model_id: str, health: Health, reason: str | None) -> None:
        try:
            self._on_change(model_id, health, reason)
        except Exception:  # a listener's bug must not stop health checks
            log.exception("health change listener failed for %s", model_id)

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # e.g. probes() itself failed; try again next round
                log.exception("health check round failed")
            await asyncio.sleep(self.interval_s)
