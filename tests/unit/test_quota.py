"""QuotaManager on a real Store: limits, the sliding window, retry_after and persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.routing.quota import Limits, QuotaManager
from app.core.storage.store import Store
from tests.support.clock import T0, Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def quota(store: Store, clock: Clock) -> QuotaManager:
    return QuotaManager(store, clock=clock)


def test_no_limits_means_full_and_never_exhausted(quota: QuotaManager) -> None:
    quota.record("m", "k", 10_000)
    assert quota.remaining_fraction("m", "k") == 1.0
    assert not quota.exhausted("m", "k")
    assert quota.retry_after("m", "k") == 0.0


def test_exhausted_by_tokens(quota: QuotaManager) -> None:
    quota.set_limits("model:m", Limits(tokens_per_hour=1000))
    quota.record("m", None, 400)
    assert quota.remaining_fraction("m") == pytest.approx(0.6)
    assert not quota.exhausted("m")
    quota.record("m", None, 600)
    assert quota.exhausted("m")
    assert quota.remaining_fraction("m") == 0.0
    assert not quota.exhausted("other")


def test_exhausted_by_requests(quota: QuotaManager) -> None:
    quota.set_limits("model:m", Limits(tokens_per_hour=10**9, requests_per_hour=3))
    for _ in range(2):
        quota.record("m", None, 1)
    assert quota.remaining_fraction("m") == pytest.approx(1 / 3)
    assert not quota.exhausted("m")
    quota.record("m", None, 1)
    assert quota.exhausted("m")


def test_per_key_limits_apply_to_that_key_only(quota: QuotaManager) -> None:
    quota.set_limits("key:alice", Limits(requests_per_hour=2))
    quota.record("m", "alice", 5)
    quota.record("m2", "alice", 5)  # the key's quota spans models
    assert quota.exhausted("m", "alice")
    assert quota.exhausted("m3", "alice")
    assert not quota.exhausted("m", "bob")
    assert not quota.exhausted("m")  # the model itself has no limit
    assert quota.usage("key:alice")["requests"] == 2
    assert quota.usage("model:m")["requests"] == 1


def test_remaining_fraction_is_the_minimum_over_scopes_and_kinds(quota: QuotaManager) -> None:
    quota.set_limits("model:m", Limits(tokens_per_hour=100, requests_per_hour=10))
    quota.set_limits("key:k", Limits(requests_per_hour=4))
    quota.record("m", "k", 30)  # model: tokens 0.7, requests 0.9; key: requests 0.75
    assert quota.remaining_fraction("m", "k") == pytest.approx(0.7)
    quota.record("m", "k", 0)  # key: requests 0.5
    assert quota.remaining_fraction("m", "k") == pytest.approx(0.5)
    assert quota.remaining_fraction("m") == pytest.approx(0.7)


def test_window_slides(quota: QuotaManager, clock: Clock) -> None:
    quota.set_limits("model:m", Limits(requests_per_hour=2))
    quota.record("m", None, 1)  # bucket at T0
    clock.t += 30 * 60
    quota.record("m", None, 1)  # bucket at T0 + 30 min
    assert quota.exhausted("m")
    clock.t = T0 + 3600 - 1
    assert quota.exhausted("m")
    clock.t = T0 + 3600  # the first bucket leaves the window
    assert not quota.exhausted("m")
    assert quota.usage("model:m")["requests"] == 1
    clock.t = T0 + 5400
    assert quota.usage("model:m")["requests"] == 0
    assert quota.remaining_fraction("m") == 1.0


def test_retry_after_from_bucket_times(quota: QuotaManager, clock: Clock) -> None:
    quota.set_limits("model:m", Limits(tokens_per_hour=100))
    clock.t = T0 + 10  # bucket starting at T0
    quota.record("m", None, 60)
    clock.t = T0 + 125  # bucket starting at T0 + 120
    quota.record("m", None, 50)
    clock.t = T0 + 600
    assert quota.exhausted("m")
    # Dropping the first bucket (60 tokens) leaves 50 < 100: allowed once it leaves at T0 + 3600.
    assert quota.retry_after("m") == pytest.approx(3000.0)
    clock.t = T0 + 3600
    assert not quota.exhausted("m")
    assert quota.retry_after("m") == 0.0


def test_retry_after_waits_for_enough_buckets_and_every_scope(quota: QuotaManager, clock: Clock) -> None:
    quota.set_limits("model:m", Limits(requests_per_hour=3))
    quota.set_limits("key:k", Limits(tokens_per_hour=10))
    for minute in range(3):  # one request per minute at T0, T0+60, T0+120
        clock.t = T0 + minute * 60
        quota.record("m", None, 0)
    clock.t = T0 + 180
    quota.record("m2", "k", 10)  # the key is exhausted, with its bucket at T0 + 180
    clock.t = T0 + 200
    # The model needs only its oldest bucket gone (T0 + 3600); the key needs its only one (T0 + 3780).
    assert quota.retry_after("m") == pytest.approx(3400.0)
    assert quota.retry_after("m", "k") == pytest.approx(3580.0)
    quota.record("m", None, 0)  # a fourth request: now two buckets must leave
    assert quota.retry_after("m") == pytest.approx(3660.0 - 200)


def test_usage_survives_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "sb.db"
    store = Store(path)
    quota = QuotaManager(store, clock=clock)
    quota.set_limits("model:m", Limits(tokens_per_hour=100, requests_per_hour=5))
    quota.set_limits("key:k", Limits(requests_per_hour=9))
    quota.record("m", "k", 70)
    clock.t += 90
    quota.record("m", "k", 30)
    store.close()

    clock.t += 60
    store = Store(path)
    again = QuotaManager(store, clock=clock)
    assert again.limits("model:m") == Limits(tokens_per_hour=100, requests_per_hour=5)
    assert again.exhausted("m")
    assert again.usage("model:m")["tokens"] == 100
    assert again.usage("key:k")["requests"] == 2
    assert again.retry_after("m") == pytest.approx(T0 + 3600 - clock.t)  # the 70-token bucket leaves
    clock.t = T0 + 3600 + 60  # both buckets gone
    assert again.usage("model:m")["requests"] == 0
    store.close()


def test_old_buckets_are_pruned_from_sqlite(store: Store, quota: QuotaManager, clock: Clock) -> None:
    for minute in range(200):
        clock.t = T0 + minute * 60
        quota.record("m", "k", 1)
    (count,) = store.query("SELECT COUNT(*) FROM quota_usage")[0]
    assert count <= 2 * 61
    assert quota.usage("model:m")["requests"] == 60


def test_set_limits_clears_and_validates(store: Store, quota: QuotaManager, clock: Clock) -> None:
    quota.set_limits("model:m", Limits(requests_per_hour=1))
    quota.set_limits("model:m", Limits())
    assert quota.limits("model:m") == Limits()
    assert QuotaManager(store, clock=clock).limits("model:m") == Limits()
    with pytest.raises(ValueError, match="scope"):
        quota.set_limits("m", Limits(requests_per_hour=1))
    with pytest.raises(ValueError, match="requests_per_hour"):
        Limits(requests_per_hour=0)
    with pytest.raises(ValueError, match="tokens_per_hour"):
        Limits(tokens_per_hour=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tokens"):
        quota.record("m", None, -1)


def test_usage_reports(quota: QuotaManager) -> None:
    quota.set_limits("model:m", Limits(tokens_per_hour=200))
    quota.set_limits("key:idle", Limits(requests_per_hour=5))
    quota.record("m", "k", 50)
    assert quota.usage("model:m") == {
        "scope": "model:m",
        "requests": 1,
        "tokens": 50,
        "limits": {"tokens_per_hour": 200, "requests_per_hour": None},
        "window_s": 3600.0,
        "remaining": 0.75,
    }
    assert set(quota.all_usage()) == {"model:m", "key:k", "key:idle"}
