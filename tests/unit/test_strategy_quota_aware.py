"""quota_aware: the most quota left wins; ties by fewer in flight; used-up and degraded targets last."""

from __future__ import annotations

from collections.abc import Sequence

from app.core.routing.strategies import RouteContext, Selection, Target
from app.core.routing.strategies.quota_aware import QuotaAware

CTX = RouteContext()


def T(key: str, quota: float = 1.0, in_flight: int = 0, **kw: object) -> Target:
    return Target(key, key.split("#")[0], quota_left=quota, in_flight=in_flight, **kw)  # type: ignore[arg-type]


def route(s: QuotaAware, targets: Sequence[Target]) -> Selection:
    sel = s.select(targets, CTX)
    s.on_start(next(t for t in targets if t.key == sel.key), CTX)
    return sel


def test_most_remaining_wins() -> None:
    sel = QuotaAware().select([T("a", 0.2), T("b", 0.9, in_flight=5), T("c", 0.5)], CTX)
    assert sel.key == "b"
    assert sel.reason == "most quota left: 90% vs 50% on c"
    assert sel.scores == {"a": 0.2, "b": 0.9, "c": 0.5}


def test_ties_go_to_fewer_in_flight_then_take_turns() -> None:
    s = QuotaAware()
    assert s.select([T("a", 0.7, 3), T("b", 0.7, 1), T("c", 0.6, 0)], CTX).key == "b"
    ts = [T("a", in_flight=1), T("b"), T("c")]  # no quotas configured: all 1.0
    assert [route(s, ts).key for _ in range(4)] == ["b", "c", "b", "c"]
    assert "3 tied" in s.select(ts, CTX).reason


def test_used_up_and_degraded_come_last() -> None:
    s = QuotaAware()
    assert s.select([T("a", 0.0), T("b", 0.05)], CTX).key == "b"
    # Healthy with a little quota beats degraded with a lot; degraded with quota beats used up.
    assert s.select([T("a", 0.9, degraded=True), T("b", 0.1)], CTX).key == "b"
    sel = s.select([T("a", 0.9, degraded=True), T("b", 0.0)], CTX)
    assert sel.key == "a" and sel.scores["a"] > sel.scores["b"]
    sel = s.select([T("a", 0.0, 2), T("b", 0.0, 1)], CTX)
    assert sel.key == "b" and sel.reason.startswith("quota used up everywhere")


def test_nonsense_quota_counts_as_used_up() -> None:
    assert QuotaAware().select([T("a", float("nan")), T("b", -1.0), T("c", 0.3)], CTX).key == "c"
    assert QuotaAware().select([T("a", 7.0), T("b", 0.3)], CTX).scores["a"] == 1.0
