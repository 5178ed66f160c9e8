"""round_robin: strict alternation, fairness when the set of targets changes, degraded targets sit out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from app.core.routing.strategies import RouteContext, Selection, Target
from app.core.routing.strategies.round_robin import RoundRobin

CTX = RouteContext()


def T(key: str, **kw: object) -> Target:
    return Target(key, key.split("#")[0], **kw)  # type: ignore[arg-type]


def route(s: RoundRobin, targets: Sequence[Target]) -> Selection:
    sel = s.select(targets, CTX)
    s.on_start(next(t for t in targets if t.key == sel.key), CTX)
    return sel


def test_alternates() -> None:
    s = RoundRobin()
    ab = [T("b"), T("a")]  # input order does not matter: sorted keys
    assert [route(s, ab).key for _ in range(6)] == ["a", "b", "a", "b", "a", "b"]


def test_even_over_many() -> None:
    s = RoundRobin()
    ts = [T(f"m{i}") for i in range(7)]
    counts = Counter(route(s, ts).key for _ in range(700))
    assert set(counts.values()) == {100}


def test_fair_when_the_set_changes() -> None:
    s = RoundRobin()
    a, b, c, d = T("a"), T("b"), T("c"), T("d")
    assert route(s, [a, b, c]).key == "a"
    assert route(s, [a, b, c]).key == "b"
    assert route(s, [a, c]).key == "c"  # b left: the next after b is c, not a restart at a
    assert route(s, [a, c, d]).key == "d"  # d joined after c: its turn comes now
    assert route(s, [a, b, c, d]).key == "a"
    assert route(s, [c, d]).key == "c"  # a (just used) and b gone: c is next after a
    # Targets present throughout get equal shares while others come and go.
    counts: Counter[str] = Counter()
    for i in range(400):
        current = [a, b] + ([c] if i % 3 else []) + ([d] if i % 5 == 0 else [])
        counts[route(s, current).key] += 1
    assert abs(counts["a"] - counts["b"]) <= 1


def test_degraded_sit_out_while_a_healthy_one_exists() -> None:
    s = RoundRobin()
    ts = [T("a", degraded=True), T("b"), T("c")]
    assert [route(s, ts).key for _ in range(4)] == ["b", "c", "b", "c"]
    all_bad = [T("a", degraded=True), T("b", degraded=True)]
    assert {route(s, all_bad).key for _ in range(4)} == {"a", "b"}


def test_scores_and_reason() -> None:
    s = RoundRobin()
    ts = [T("a"), T("b"), T("c", degraded=True)]
    route(s, ts)  # a
    sel = s.select(ts, CTX)
    assert sel.key == "b"
    assert sel.scores["b"] == 1.0 and sel.scores["a"] == 0.5  # next in turn first, the one just used last
    assert sel.scores["c"] < 0  # degraded: sits out and is penalised
    assert sel.reason == "round robin: next in turn (2 of 2); 1 degraded sitting out"
    assert s.select([T("x")], CTX).reason == "round robin: only target"
