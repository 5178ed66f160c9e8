"""A worker's own keep-alive (Ollama's keep_alive) as the idle reaper's pure rule sees it."""

from __future__ import annotations

import math

from app.core.runtime.placement import Resident, expired


def test_own_keep_alive_replaces_the_idle_ttl() -> None:
    resident = [Resident("short", 1, 95.0, ttl=2.0), Resident("long", 1, 0.0, ttl=500.0),
                Resident("default", 1, 85.0)]
    assert expired(resident, now=100.0, ttl=10.0) == ["short", "default"]


def test_forever_never_expires_and_zero_expires_once_idle() -> None:
    resident = [Resident("forever", 1, 0.0, ttl=math.inf), Resident("now", 1, 100.0, ttl=0.0),
                Resident("busy", 1, 0.0, busy=True, ttl=0.0)]
    assert expired(resident, now=100.0, ttl=10.0) == ["now"]


def test_a_pinned_model_outlives_its_keep_alive() -> None:
    assert expired([Resident("pinned", 1, 0.0, pinned=True, ttl=0.0)], now=100.0, ttl=10.0) == []
