"""Eviction decisions are pure functions: no processes needed to test them."""

from __future__ import annotations

from app.core.runtime.placement import Resident, choose_evictions, context_for, estimate_bytes, expired, kv_cache_bytes

MB = 1 << 20


def test_nothing_to_evict_when_it_fits() -> None:
    assert choose_evictions([Resident("a", 100 * MB, 1.0)], 50 * MB, 200 * MB) == []


def test_least_recently_used_idle_models_go_first() -> None:
    resident = [Resident("old", 100 * MB, 1.0), Resident("new", 100 * MB, 5.0), Resident("mid", 100 * MB, 3.0)]
    assert choose_evictions(resident, 100 * MB, 300 * MB) == ["old"]
    assert choose_evictions(resident, 200 * MB, 300 * MB) == ["old", "mid"]


def test_busy_loading_and_pinned_models_are_never_evicted() -> None:
    resident = [
        Resident("busy", 100 * MB, 1.0, busy=True),
        Resident("loading", 100 * MB, 1.0, loading=True),
        Resident("pinned", 100 * MB, 1.0, pinned=True),
        Resident("idle", 100 * MB, 9.0),
    ]
    assert choose_evictions(resident, 100 * MB, 400 * MB) == ["idle"]
    assert choose_evictions(resident, 200 * MB, 400 * MB) is None


def test_idle_ttl() -> None:
    resident = [Resident("stale", 1, 0.0), Resident("fresh", 1, 95.0), Resident("pinned", 1, 0.0, pinned=True),
                Resident("busy", 1, 0.0, busy=True)]
    assert expired(resident, now=100.0, ttl=10.0) == ["stale"]


def test_memory_estimate_counts_weights_and_kv_cache() -> None:
    meta = {"size": 100 * MB, "block_count": 30, "embedding_length": 576, "head_count": 9, "head_count_kv": 3,
            "context_length": 8192}
    # 2 (K,V) x 30 layers x 2048 positions x 3 kv heads x 64 dims x 2 bytes
    assert kv_cache_bytes(meta, 2048) == 2 * 30 * 2048 * 3 * 64 * 2
    assert estimate_bytes(meta, 2048) > estimate_bytes(meta, 1024) > 100 * MB
    assert context_for(meta, 100_000) == 8192 and context_for(meta, 4096) == 4096
    assert kv_cache_bytes({"size": 1}, 4096) == 0, "unknown shape: no guess"
