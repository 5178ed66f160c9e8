"""affinity: sticky sessions with a TTL and a bounded table, pins of each kind and their precedence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from app.core.routing.strategies import RouteContext, Selection, Target
from app.core.routing.strategies.affinity import Affinity


def T(key: str, in_flight: int = 0, **kw: object) -> Target:
    return Target(key, key.split("#")[0], in_flight=in_flight, **kw)  # type: ignore[arg-type]


def C(session: str | None = "s1", now: float = 0.0, **kw: Any) -> RouteContext:
    return RouteContext(session_key=session, now=now, **kw)


def route(s: Affinity, targets: Sequence[Target], ctx: RouteContext) -> Selection:
    sel = s.select(targets, ctx)
    s.on_start(next(t for t in targets if t.key == sel.key), ctx)
    return sel


def test_same_session_same_target_across_100_calls() -> None:
    s = Affinity()
    first = route(s, [T("a"), T("b"), T("c")], C(now=0.0))
    assert first.key == "a"
    for i in range(100):
        # The first target gets busy; the others are emptier, yet the session stays.
        ts = [T("a", 3 + i % 4), T("b", i % 2), T("c", 0)]
        sel = route(s, ts, C(now=float(i)))
        assert sel.key == "a" and sel.reason == "sticky session on a"
        assert sel.scores["a"] == max(sel.scores.values())
    # Other sessions spread by load.
    assert route(s, [T("a", 3), T("b", 0)], C("s2")).key == "b"


def test_ttl_expiry_and_refresh() -> None:
    s = Affinity.from_params({"ttl_s": 100})
    route(s, [T("a"), T("b", 1)], C(now=0.0))
    ts = [T("a", 2), T("b", 0)]
    assert route(s, ts, C(now=90.0)).key == "a"  # refreshed: now valid until 190
    assert route(s, ts, C(now=180.0)).key == "a"  # until 280
    sel = route(s, ts, C(now=281.0))  # expired: least loaded, and sticks there
    assert sel.key == "b" and sel.reason.startswith("least loaded")
    assert route(s, [T("a", 0), T("b", 3)], C(now=290.0)).key == "b"


def test_table_is_bounded_oldest_dropped() -> None:
    s = Affinity.from_params({"max_sessions": 10})
    for i in range(25):
        s.on_start(T(f"m{i}"), C(f"s{i}", now=float(i)))
        assert s.session_count() <= 10
    ts = [T(f"m{i}") for i in range(25)]
    assert s.select(ts, C("s24", now=30.0)).key == "m24"  # recent: kept
    assert s.select(ts, C("s3", now=30.0)).reason.startswith("least loaded")  # oldest: dropped


def test_session_moves_off_a_degraded_or_missing_target() -> None:
    s = Affinity()
    route(s, [T("a"), T("b", 1)], C())
    sel = s.select([T("a", degraded=True), T("b", 1)], C())
    assert sel.key == "b" and "session's target a is degraded" in sel.reason
    sel = s.select([T("b", 1), T("c", 2)], C())
    assert sel.key == "b" and "session's target a is gone" in sel.reason
    # When every target is degraded, the session stays.
    assert s.select([T("a", degraded=True), T("b", degraded=True)], C()).key == "a"


PINS = [
    {"kind": "capability", "value": "vision", "model_id": "vis"},
    {"kind": "api_key", "value": "key-1", "model_id": "keyed"},
    {"kind": "user", "value": "ann", "model_id": "anns"},
    {"kind": "session", "value": "s-pinned", "model_id": "sess"},
]
ALL = [T("gen"), T("vis", 1), T("vis#1", 0, replica=1), T("keyed"), T("anns"), T("sess")]


@pytest.mark.parametrize(
    ("ctx", "expected", "kind"),
    [
        (C("s-pinned", user="ann", api_key_id="key-1", capabilities=frozenset({"vision"})), "sess", "session"),
        (C("other", user="ann", api_key_id="key-1", capabilities=frozenset({"vision"})), "anns", "user"),
        (C("other", user="bob", api_key_id="key-1", capabilities=frozenset({"vision"})), "keyed", "api_key"),
        (C("other", user="bob", api_key_id="key-2", capabilities=frozenset({"vision", "chat"})), "vis#1",
         "capability"),
    ],
)
def test_pins_of_each_kind_and_precedence(ctx: RouteContext, expected: str, kind: str) -> None:
    s = Affinity.from_params({"pins": PINS})
    sel = s.select(ALL, ctx)
    assert sel.key == expected and sel.detail == {"pin": kind}
    assert sel.reason.startswith(f"pinned by {kind}")


def test_pin_beats_sticky_session_and_sticky_beats_fallback() -> None:
    s = Affinity.from_params({"pins": [{"kind": "user", "value": "ann", "model_id": "anns"}]})
    route(s, [T("gen"), T("anns", 1)], C("s9"))  # sticks to gen
    assert s.select(ALL, C("s9", user="ann")).key == "anns"
    assert s.select(ALL, C("s9", user="bob")).key == "gen"


def test_pinned_model_without_target_falls_back_and_says_so() -> None:
    s = Affinity.from_params({"pins": [{"kind": "user", "value": "ann", "model_id": "gone"},
                                       {"kind": "capability", "value": "vision", "model_id": "vis"}]})
    sel = s.select(ALL, C(None, user="ann", capabilities=frozenset({"vision"})))
    assert sel.key == "vis#1"
    assert sel.reason == "pinned by capability 'vision' to vis (user pin's model gone has no target)"
    sel = s.select([T("a", 2), T("b", 1)], C(None, user="ann"))
    assert sel.key == "b" and sel.reason.startswith("user pin's model gone has no target; least loaded")


def test_pin_validation() -> None:
    with pytest.raises(ValueError, match="pinned twice"):
        Affinity.from_params({"pins": [{"kind": "user", "value": "a", "model_id": "m"}] * 2})
    with pytest.raises(ValueError, match=r"pins\[0\]\.model_id"):
        Affinity.from_params({"pins": [{"kind": "user", "value": "a"}]})
    with pytest.raises(ValueError, match=r"pins\[0\]: unknown field colour"):
        Affinity.from_params({"pins": [{"kind": "user", "value": "a", "model_id": "m", "colour": "red"}]})
