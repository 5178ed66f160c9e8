"""latency_based: unmeasured targets explored first, then the fastest, with periodic re-exploration."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from app.core.routing.strategies import RouteContext, Selection, Target
from app.core.routing.strategies.latency_based import LatencyBased

CTX = RouteContext()


def T(key: str, ttft: float | None = None, tpot: float | None = None, samples: int = 0, **kw: object) -> Target:
    model = key.split("#")[0]
    return Target(key, model, ttft_s=ttft, tpot_s=tpot, latency_samples=samples, **kw)  # type: ignore[arg-type]


def L(**params: object) -> LatencyBased:
    return LatencyBased.from_params(params)


def route(s: LatencyBased, targets: Sequence[Target]) -> Selection:
    sel = s.select(targets, CTX)
    s.on_start(next(t for t in targets if t.key == sel.key), CTX)
    return sel


def test_explores_unmeasured_targets_first_fewest_samples_first() -> None:
    s = LatencyBased()
    fast = T("fast", 0.05, 0.01, samples=50)
    sel = s.select([fast, T("new", samples=0), T("young", 0.2, 0.02, samples=1)], CTX)
    assert sel.key == "new" and sel.reason == "exploring: new has 0 of 3 samples"
    assert s.select([fast, T("young", 0.2, 0.02, samples=2)], CTX).key == "young"
    # An unmeasured target already busy with a probe is not piled onto.
    assert s.select([fast, T("new", samples=0, in_flight=1)], CTX).key == "fast"


def test_prefers_the_fastest_expected_answer() -> None:
    quick_start = T("a", ttft=0.05, tpot=0.05, samples=10)  # 0.05 + 64 * 0.05 = 3.25 s
    quick_stream = T("b", ttft=0.30, tpot=0.01, samples=10)  # 0.30 + 64 * 0.01 = 0.94 s
    sel = LatencyBased().select([quick_start, quick_stream], CTX)
    assert sel.key == "b"
    assert sel.reason == "fastest: ~940 ms expected vs ~3250 ms on a"
    assert sel.scores == pytest.approx({"b": 1 / 1.94, "a": 1 / 4.25})  # 1 / (1 + expected seconds)
    assert L(expected_tokens=0).select([quick_start, quick_stream], CTX).key == "a"


def test_re_explores_periodically() -> None:
    s = L(explore_every=5)
    fast, slow = T("fast", 0.05, 0.01, samples=100), T("slow", 0.5, 0.05, samples=4)
    picks = [route(s, [fast, slow]).key for _ in range(20)]
    assert [i + 1 for i, k in enumerate(picks) if k == "slow"] == [5, 10, 15, 20]
    assert L(explore_every=0).select([fast, slow], CTX).key == "fast"


def test_early_luck_is_not_forever() -> None:
    # A target measured fast on few samples is re-checked: after the router's EWMA catches up, it loses.
    s = L(explore_every=4)
    lucky = T("lucky", 0.01, 0.001, samples=3)
    steady = T("steady", 0.1, 0.005, samples=3)
    assert route(s, [lucky, steady]).key == "lucky"
    lucky = T("lucky", 0.4, 0.02, samples=6)  # its real speed showed up
    assert [route(s, [lucky, steady]).key for _ in range(3)] == ["steady"] * 3


def test_no_division_by_zero() -> None:
    s = L(min_samples=0)
    zero = [T("a", 0.0, 0.0, samples=5), T("b", 0.0, 0.0, samples=5)]
    sel = s.select(zero, CTX)
    assert sel.scores == {"a": 1.0, "b": 1.0} and "tied" in sel.reason  # instant answers score 1
    s.on_start(zero[0], CTX)
    assert s.select(zero, CTX).key == "b"  # exact ties take turns
    for odd in ([T("a"), T("b")], [T("a", float("nan"), None, 5), T("b", float("inf"), -1.0, 5)],
                [T("a", 0.1, None, 5), T("b", 0.1, None, 5)]):
        sel = LatencyBased().select(odd, CTX)
        assert sel.key in {"a", "b"}
    sel = LatencyBased().select([T("a", in_flight=1), T("b", in_flight=2)], CTX)
    assert sel.key == "a" and sel.reason == "no latency measured yet: fewest in flight"


def test_degraded_measured_fast_is_still_avoided() -> None:
    sel = LatencyBased().select([T("a", 0.01, 0.001, 10, degraded=True), T("b", 0.5, 0.05, 10)], CTX)
    assert sel.key == "b" and sel.scores["a"] < sel.scores["b"]
