"""least_loaded: the emptiest target, memory pressure counted as load, deterministic turn-taking among ties."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from app.core.routing.strategies import RouteContext, Selection, Target
from app.core.routing.strategies.least_loaded import LeastLoaded

CTX = RouteContext()


def T(key: str, in_flight: int = 0, memory: float = 0.0, **kw: object) -> Target:
    return Target(key, key.split("#")[0], in_flight=in_flight, memory_pressure=memory, **kw)  # type: ignore[arg-type]


def route(s: LeastLoaded, targets: Sequence[Target]) -> Selection:
    sel = s.select(targets, CTX)
    s.on_start(next(t for t in targets if t.key == sel.key), CTX)
    return sel


def test_picks_the_emptiest() -> None:
    sel = LeastLoaded().select([T("a", 3), T("b", 0), T("c", 5)], CTX)
    assert sel.key == "b"
    assert sel.reason == "least loaded: 0 in flight vs 3 in flight on a"
    assert sel.scores["b"] == 1.0 and sel.scores["a"] == 0.25 and sel.scores["c"] == pytest.approx(1 / 6)


def test_memory_pressure_counts_as_load() -> None:
    ts = [T("a", 1, 0.0), T("b", 0, 0.9)]  # b: 0 + 2.0 * 0.9 = 1.8 > 1
    sel = LeastLoaded().select(ts, CTX)
    assert sel.key == "a"
    assert "load 1.8 (0 in flight + memory 1.8)" in sel.reason
    assert LeastLoaded.from_params({"memory_weight": 0.0}).select(ts, CTX).key == "b"
    equal = LeastLoaded.from_params({"memory_weight": 1.0})
    assert equal.select([T("a", 1), T("b", 0, 1.0)], CTX).reason.endswith("taking turns")


def test_ties_take_turns_deterministically() -> None:
    s = LeastLoaded()
    ts = [T("c"), T("a"), T("b"), T("d", 1)]
    assert [route(s, ts).key for _ in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]
    assert "3 tied at 0 in flight, taking turns" in s.select(ts, CTX).reason
    # A fresh strategy starts from the lowest key: deterministic.
    assert LeastLoaded().select(ts, CTX).key == "a"


def test_degraded_avoided_unless_all_are() -> None:
    s = LeastLoaded()
    sel = s.select([T("a", 0, degraded=True), T("b", 5)], CTX)
    assert sel.key == "b" and sel.scores["a"] < sel.scores["b"]
    assert "(degraded)" in sel.reason
    assert s.select([T("a", 2, degraded=True), T("b", 1, degraded=True)], CTX).key == "b"


def test_nonsense_inputs_count_as_nothing() -> None:
    sel = LeastLoaded().select([T("a", -5, float("nan")), T("b", 0, 5.0)], CTX)
    assert sel.key == "a"  # a: load 0; b: memory clamped to 1 -> load 2


def test_params() -> None:
    assert LeastLoaded().params() == {"memory_weight": 2.0}
    assert LeastLoaded.from_params({"memory_weight": 0}).config.memory_weight == 0.0
    with pytest.raises(ValueError, match="memory_weight"):
        LeastLoaded.from_params({"memory_weight": -0.5})
    with pytest.raises(ValueError, match="weight"):
        LeastLoaded.from_params({"weight": 1})


def test_free_slots_count_not_requests() -> None:
    # Two of four slots busy is half as loaded as the one slot of a single-slot worker.
    sel = LeastLoaded().select([T("one", 1), T("four", 2, slots=4)], CTX)
    assert sel.key == "four" and sel.scores["four"] == pytest.approx(1 / 1.5)
    assert sel.reason == "least loaded: 2 in flight on 4 slots vs 1 in flight on one"
    # Load per slot is the wait a new request would see: 6 on 4 slots drains sooner than 2 on 1, 9 on 4 later.
    assert LeastLoaded().select([T("one", 2), T("four", 6, slots=4)], CTX).key == "four"
    assert LeastLoaded().select([T("one", 2), T("four", 9, slots=4)], CTX).key == "one"


def test_prompt_tokens_still_to_evaluate_count_as_load() -> None:
    s = LeastLoaded()
    # Same requests in flight, but one worker still has a long prompt to evaluate: the other is less loaded.
    ts = [T("a", 1, slots=4, pending_tokens=4096), T("b", 1, slots=4)]
    sel = route(s, ts)
    assert sel.key == "b"
    assert sel.scores["b"] > sel.scores["a"]
    assert "4096 prompt tokens to evaluate" in sel.reason and "memory" not in sel.reason
