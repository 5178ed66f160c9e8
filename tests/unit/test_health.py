"""Circuit breaker, health book and the async health checker. Time is passed in, so nothing sleeps."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.core.routing.health import BreakerConfig, BreakerState, CircuitBreaker, Health, HealthBook
from app.core.routing.health_checker import HealthChecker
from app.core.runtime.local.handle import WorkerState

CFG = BreakerConfig(failure_threshold=3, success_threshold=2, cooldown_s=30.0, window_s=300.0,
                    degraded_error_rate=0.2, degraded_min_requests=10)


def opened(at: float = 0.0, config: BreakerConfig = CFG) -> CircuitBreaker:
    breaker = CircuitBreaker(config)
    for _ in range(config.failure_threshold):
        breaker.record_failure(at, "connection refused")
    return breaker


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- CircuitBreaker ----------------------------------------------------------------------------
def test_unknown_until_the_first_result_then_healthy() -> None:
    breaker = CircuitBreaker(CFG)
    assert breaker.health(0.0) is Health.UNKNOWN
    assert breaker.allow(0.0)
    breaker.record_success(1.0, latency_s=0.1)
    assert breaker.health(1.0) is Health.HEALTHY
    assert breaker.reason is None and breaker.retry_in(1.0) == 0.0


def test_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(CFG)
    breaker.record_failure(0.0, "boom")
    breaker.record_failure(1.0, "boom")
    breaker.record_success(2.0)  # breaks the run
    breaker.record_failure(3.0, "boom")
    breaker.record_failure(4.0, "boom")
    assert breaker.state(4.0) is BreakerState.CLOSED and breaker.allow(4.0)
    breaker.record_failure(5.0, "worker crashed")
    assert breaker.state(5.0) is BreakerState.OPEN
    assert breaker.health(5.0) is Health.UNHEALTHY
    assert breaker.reason == "worker crashed"
    assert not breaker.allow(5.0)
    assert breaker.retry_in(5.0) == pytest.approx(30.0)
    assert breaker.retry_in(20.0) == pytest.approx(15.0)


def test_half_open_after_cooldown_lets_one_probe_through_at_a_time() -> None:
    breaker = opened(at=0.0)
    assert not breaker.allow(29.9)
    assert breaker.state(30.0) is BreakerState.HALF_OPEN
    assert breaker.health(30.0) is Health.UNHEALTHY  # unproven until it closes
    assert breaker.allow(30.0, claim=False) and breaker.allow(30.0, claim=False)  # peeking claims nothing
    assert breaker.allow(30.0)
    assert not breaker.allow(30.1)  # the slot is taken
    assert breaker.retry_in(31.0) == pytest.approx(29.0)
    breaker.record_success(31.0)
    assert breaker.state(31.0) is BreakerState.HALF_OPEN  # one of two successes
    assert breaker.allow(31.0)
    breaker.record_success(32.0)
    assert breaker.state(32.0) is BreakerState.CLOSED
    assert breaker.health(32.0) is Health.HEALTHY
    assert breaker.reason is None


def test_a_failure_while_half_open_reopens_with_a_fresh_cooldown() -> None:
    breaker = opened(at=0.0)
    assert breaker.allow(30.0)
    breaker.record_success(31.0)
    assert breaker.allow(31.0)
    breaker.record_failure(32.0, "still down")
    assert breaker.state(32.0) is BreakerState.OPEN
    assert breaker.reason == "still down"
    assert not breaker.allow(61.0)
    assert breaker.allow(62.0)
    # The success before the failure does not count towards closing.
    breaker.record_success(62.5)
    assert breaker.state(62.5) is BreakerState.HALF_OPEN


def test_a_lost_probe_claim_lapses_after_the_cooldown() -> None:
    breaker = opened(at=0.0)
    assert breaker.allow(30.0)
    assert not breaker.allow(59.0)
    assert breaker.allow(60.0)


def test_late_results_while_open() -> None:
    breaker = opened(at=0.0)
    breaker.record_success(10.0)  # a request sent before it opened
    assert breaker.state(10.0) is BreakerState.OPEN
    breaker.record_failure(20.0, "again")  # still failing: the cooldown restarts
    assert not breaker.allow(45.0)
    assert breaker.allow(50.0)


def test_degraded_by_error_rate_over_the_window() -> None:
    breaker = CircuitBreaker(CFG)
    for i in range(7):
        breaker.record_success(float(i))
    breaker.record_failure(7.0, "bad gateway")
    breaker.record_success(8.0)
    breaker.record_failure(9.0, "bad gateway")
    # 2 of 10 failed = 20 %: degraded, but the breaker stays closed.
    assert breaker.health(9.0) is Health.DEGRADED
    assert breaker.state(9.0) is BreakerState.CLOSED and breaker.allow(9.0)
    assert breaker.explain(9.0) == "2 of the last 10 requests failed"
    # The window slides: at t=301 the first results are gone, at t=310 everything is.
    assert breaker.health(301.0) is Health.HEALTHY  # 9 results left: below the minimum
    assert breaker.health(400.0) is Health.HEALTHY


def test_not_degraded_below_the_minimum_number_of_requests() -> None:
    breaker = CircuitBreaker(CFG)
    breaker.record_failure(0.0, "x")
    breaker.record_success(1.0)
    assert breaker.health(1.0) is Health.HEALTHY  # 50 % of 2 requests is too little evidence


def test_degraded_by_slow_time_to_first_token() -> None:
    breaker = CircuitBreaker(BreakerConfig(degraded_ttft_s=2.0, window_s=60.0))
    breaker.record_success(0.0, latency_s=1.0)
    breaker.record_success(1.0, latency_s=2.0)
    assert breaker.health(1.0) is Health.HEALTHY
    breaker.record_success(2.0, latency_s=6.0)  # mean 3 s
    assert breaker.health(2.0) is Health.DEGRADED
    assert "mean time to first token 3.00 s" in (breaker.explain(2.0) or "")
    breaker.record_success(70.0, latency_s=0.5)  # the slow samples aged out
    assert breaker.health(70.0) is Health.HEALTHY
    assert breaker.explain(70.0) is None


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        BreakerConfig(failure_threshold=0)
    with pytest.raises(ValueError):
        BreakerConfig(window_s=0)


# -- HealthBook --------------------------------------------------------------------------------
def test_book_keeps_one_breaker_per_model() -> None:
    book = HealthBook(CFG)
    assert book.health("a", 0.0) is Health.UNKNOWN and book.allow("a", 0.0) and book.reason("a") is None
    assert book.record("a", True, 0.0, latency_s=0.2) is Health.HEALTHY
    for t in (1.0, 2.0):
        assert book.record("b", False, t, reason="refused") is Health.HEALTHY
    assert book.record("b", False, 3.0, reason="refused") is Health.UNHEALTHY
    assert not book.allow("b", 3.0) and book.allow("a", 3.0)
    assert book.reason("b") == "refused" and book.retry_in("b", 3.0) == pytest.approx(30.0)
    assert sorted(book.models()) == ["a", "b"]
    book.forget("b")
    assert book.health("b", 3.0) is Health.UNKNOWN and book.allow("b", 3.0)


def recording(book: HealthBook) -> list[tuple[str, Health, str | None]]:
    changes: list[tuple[str, Health, str | None]] = []
    book.subscribe(lambda *change: changes.append(change))
    return changes


def test_what_a_model_shows_is_set_once_and_listeners_hear_only_changes() -> None:
    book = HealthBook(CFG)
    changes = recording(book)
    assert book.shown("smol") == (Health.UNKNOWN, None)
    book.show("smol", Health.HEALTHY)
    book.show("base", Health.UNHEALTHY, "load failed")
    book.show("base", Health.UNHEALTHY, "load failed")  # the same again: nothing to tell
    assert book.shown("smol") == (Health.HEALTHY, None) and book.shown("base") == (Health.UNHEALTHY, "load failed")
    assert changes == [("smol", Health.HEALTHY, None), ("base", Health.UNHEALTHY, "load failed")]
    book.forget("base")
    assert book.shown("base") == (Health.UNKNOWN, None) and len(changes) == 2
    unsubscribe = book.subscribe(lambda *_: changes.append(("late", Health.UNKNOWN, None)))
    unsubscribe()
    book.show("smol", Health.DEGRADED, "slow")
    assert changes[-1] == ("smol", Health.DEGRADED, "slow") and len(changes) == 3


def test_workers_decide_what_a_model_shows() -> None:
    book = HealthBook(CFG)
    changes = recording(book)
    book.worker_changed("m", 0, WorkerState.STARTING)
    assert book.shown("m") == (Health.UNKNOWN, None) and changes == [], "loading is a worker state, not a health"
    book.worker_changed("m", 0, WorkerState.READY)
    assert book.shown("m") == (Health.HEALTHY, None)
    book.worker_changed("m", 1, WorkerState.STARTING)
    book.worker_changed("m", 1, WorkerState.FAILED, "failed to load: bad tensor")
    assert book.shown("m") == (Health.UNHEALTHY, "failed to load: bad tensor")
    book.worker_changed("m", 1, WorkerState.STARTING)
    book.worker_changed("m", 1, WorkerState.READY)
    book.worker_changed("m", 0, WorkerState.STOPPING)
    book.worker_changed("m", 0, WorkerState.STOPPED)
    assert book.shown("m") == (Health.HEALTHY, None), "replica 1 still runs"
    book.worker_changed("m", 1, WorkerState.FAILED, "killed by signal 9")
    assert book.shown("m") == (Health.UNHEALTHY, "killed by signal 9")
    book.worker_changed("m", 2, WorkerState.STARTING)
    book.worker_changed("m", 2, WorkerState.STOPPING)
    book.worker_changed("m", 2, WorkerState.STOPPED)
    assert book.shown("m") == (Health.UNKNOWN, None), "the last worker stopped as asked"
    assert [c[1] for c in changes] == [Health.HEALTHY, Health.UNHEALTHY, Health.HEALTHY, Health.UNHEALTHY,
                                       Health.UNKNOWN]


def test_a_crash_counts_once_however_many_requests_it_ended() -> None:
    from app.core.routing.request import Finished, RouteRequest, RoutingDecision
    from app.core.routing.strategies.base import Outcome

    book = HealthBook(BreakerConfig(failure_threshold=3))
    book.worker_changed("m", 0, WorkerState.STARTING, now=1.0)
    book.worker_changed("m", 0, WorkerState.READY, now=1.0)
    book.worker_changed("m", 0, WorkerState.FAILED, "killed by signal 9", now=2.0)
    decision = RoutingDecision("m", "direct", "requested by name", 1.0, ())
    for _ in range(4):  # the four requests it was decoding
        book.on_finished(Finished(decision, RouteRequest("chat", "m", ()), Outcome(ok=False, error="stopped",
                                                                                    crashed=True), 503, 2.0))
    assert book.allow("m", 2.0) and book.breaker("m").state(2.0) is BreakerState.CLOSED
    assert book.shown("m") == (Health.UNHEALTHY, "killed by signal 9")
    for _ in range(2):  # two more crashes open it
        book.worker_changed("m", 0, WorkerState.STARTING, now=3.0)
        book.worker_changed("m", 0, WorkerState.READY, now=3.0)
        book.worker_changed("m", 0, WorkerState.FAILED, "killed by signal 9", now=3.0)
    assert not book.allow("m", 3.0)


def test_what_the_book_shows_filters_what_routing_may_use_and_reaches_engine_listeners(tmp_path: Path) -> None:
    from app.core.config import Config
    from app.core.engine import Engine
    from app.core.services import Models
    from app.core.storage.store import Store
    from tests.support.models import found

    engine = Engine(Config(discovery=False), Store(tmp_path / "db.sqlite3"))  # builds no worker
    events: list[tuple[str, str]] = []
    engine.subscribe(lambda event, entry: events.append((event, entry.id)))
    engine.registry.sync([found("base", "q4_0", "/m/base.gguf", template=None),
                          found("smol", "q4_1", "/m/smol.gguf", source="embedded")])
    engine.health.show("smol:q4_1", Health.HEALTHY)
    engine.health.show("base:q4_0", Health.UNHEALTHY, "load failed")
    models = Models(engine)
    assert [e.id for e in models.all() if models.health(e.id)[0] is Health.HEALTHY] == ["smol:q4_1"]
    assert [e.id for e in models.available()] == ["smol:q4_1"]
    assert engine.model_health("base:q4_0") == (Health.UNHEALTHY, "load failed")
    assert ("health", "base:q4_0") in events and ("added", "smol:q4_1") in events
    engine.store.close()


def test_request_results_show_the_breaker_but_one_failure_never_hides_a_worse_fact() -> None:
    book = HealthBook(CFG)
    book.worker_changed("m", 0, WorkerState.FAILED, "killed by signal 9")
    assert book.record_request("m", False, 1.0, reason="worker stopped") is Health.HEALTHY  # 1 of 3 failures
    assert book.shown("m") == (Health.UNHEALTHY, "killed by signal 9")
    assert book.record_request("m", True, 2.0, latency_s=0.1) is Health.HEALTHY
    assert book.shown("m") == (Health.HEALTHY, "worker stopped"), "the breaker's last failure stays its reason"
    for t in (3.0, 4.0, 5.0):
        book.record_request("m", False, t, reason="HTTP 500")
    assert book.shown("m") == (Health.UNHEALTHY, "HTTP 500"), "the breaker opened: that is worse, so it shows"
    book.worker_changed("n", 0, WorkerState.READY)
    book.record_request("n", False, 1.0, reason="timeout")
    assert book.shown("n") == (Health.HEALTHY, None), "one failure of a healthy model changes nothing shown"


# -- HealthChecker -----------------------------------------------------------------------------
def ok_probe(latency: float = 0.05):
    async def probe() -> tuple[bool, float, str | None]:
        return True, latency, None
    return probe


def failing_probe(reason: str = "HTTP 503"):
    async def probe() -> tuple[bool, float, str | None]:
        return False, 0.01, reason
    return probe


def raising_probe(calls: list[str] | None = None):
    async def probe() -> tuple[bool, float, str | None]:
        if calls is not None:
            calls.append("called")
        raise ConnectionResetError("peer reset the connection")
    return probe


async def test_check_once_feeds_the_book_and_reports_changes() -> None:
    clock = Clock()
    changes: list[tuple[str, Health, str | None]] = []
    book = HealthBook(CFG)
    probes = {"good": ok_probe(), "bad": failing_probe(), "broken": raising_probe()}
    checker = HealthChecker(book, lambda: probes, on_change=lambda *c: changes.append(c), clock=clock)

    result = await checker.check_once()
    # One failure each is not enough to open a breaker; a first success makes a model healthy.
    assert result == {"good": Health.HEALTHY, "bad": Health.HEALTHY, "broken": Health.HEALTHY}
    assert changes == [("good", Health.HEALTHY, None), ("bad", Health.HEALTHY, None),
                       ("broken", Health.HEALTHY, None)]
    assert book.reason("broken") == "ConnectionResetError: peer reset the connection"
    assert book.reason("bad") == "HTTP 503"

    changes.clear()
    for _ in range(2):
        clock.now += 15
        await checker.check_once()
    assert changes == [("bad", Health.UNHEALTHY, "HTTP 503"),
                       ("broken", Health.UNHEALTHY, "ConnectionResetError: peer reset the connection")]
    changes.clear()
    clock.now += 15
    await checker.check_once()
    assert changes == []  # no change, no call


async def test_open_breakers_are_probed_only_when_half_open_and_recover() -> None:
    clock = Clock()
    calls: list[str] = []
    changes: list[tuple[str, Health, str | None]] = []
    book = HealthBook(CFG)
    probes = {"m": raising_probe(calls)}
    checker = HealthChecker(book, lambda: probes, on_change=lambda *c: changes.append(c), clock=clock)
    for _ in range(3):
        await checker.check_once()
        clock.now += 1
    assert len(calls) == 3 and book.health("m", clock.now) is Health.UNHEALTHY

    clock.now += 10  # still cooling down: the probe is not sent
    await checker.check_once()
    assert len(calls) == 3

    probes["m"] = ok_probe()  # the model came back
    clock.now += 30  # half-open now
    await checker.check_once()
    assert book.health("m", clock.now) is Health.UNHEALTHY  # 1 of 2 successes
    clock.now += 15
    await checker.check_once()
    assert book.health("m", clock.now) is Health.HEALTHY
    assert [c[1] for c in changes] == [Health.HEALTHY, Health.UNHEALTHY, Health.HEALTHY]


async def test_a_probe_that_hangs_times_out_as_a_failure() -> None:
    never = asyncio.Event()

    async def hangs() -> tuple[bool, float, str | None]:
        await never.wait()
        return True, 0.0, None

    book = HealthBook(CFG)
    checker = HealthChecker(book, lambda: {"slow": hangs}, on_change=lambda *c: None, timeout_s=0.05)
    await checker.check_once()
    assert book.reason("slow") == "health probe timed out after 0.05 s"


async def test_models_come_and_go_and_listener_errors_are_contained() -> None:
    clock = Clock()
    probes = {"a": ok_probe()}
    seen: list[str] = []

    def listener(model_id: str, health: Health, reason: str | None) -> None:
        seen.append(model_id)
        raise RuntimeError("listener bug")

    checker = HealthChecker(HealthBook(CFG), lambda: dict(probes), on_change=listener, clock=clock)
    await checker.check_once()
    del probes["a"]
    probes["b"] = ok_probe()
    assert await checker.check_once() == {"b": Health.HEALTHY}
    assert seen == ["a", "b"]


async def test_start_runs_rounds_until_stopped() -> None:
    rounds = 0
    changed = asyncio.Event()

    def probes() -> dict[str, object]:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            raise OSError("listing workers failed")  # a failed round must not end the loop
        return {"a": ok_probe()}

    changes: list[tuple[str, Health, str | None]] = []

    def on_change(*change: object) -> None:
        changes.append(change)  # type: ignore[arg-type]
        changed.set()

    checker = HealthChecker(HealthBook(CFG), probes, interval_s=0.01, on_change=on_change)
    checker.start()
    checker.start()  # idempotent
    assert checker.running
    await asyncio.wait_for(changed.wait(), 5)
    await checker.stop()
    assert not checker.running
    assert rounds >= 2 and changes == [("a", Health.HEALTHY, None)]
    await checker.stop()  # stopping twice is harmless
