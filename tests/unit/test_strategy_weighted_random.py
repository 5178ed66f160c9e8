"""weighted_random: proportional draws (stated tolerances), zero weight never, seeded reproducibility."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from app.core.routing.strategies import RouteContext, Target
from app.core.routing.strategies.weighted_random import WeightedRandom

CTX = RouteContext()
N = 2000
TOLERANCE = 0.05  # percentage points / 100; binomial sd at p=0.75, n=2000 is ~0.01, so this is ~5 sd


def T(key: str, weight: float = 1.0, **kw: object) -> Target:
    return Target(key, key.split("#")[0], weight=weight, **kw)  # type: ignore[arg-type]


def W(**params: object) -> WeightedRandom:
    return WeightedRandom.from_params(params)


def shares(s: WeightedRandom, targets: list[Target], n: int = N) -> dict[str, float]:
    counts = Counter(s.select(targets, CTX).key for _ in range(n))
    return {k: counts[k] / n for k in (t.key for t in targets)}


def test_three_to_one_split() -> None:
    got = shares(W(weights={"a": 3, "b": 1}, seed=42), [T("a"), T("b")])
    assert got["a"] == pytest.approx(0.75, abs=TOLERANCE)
    sel = W(weights={"a": 3, "b": 1}, seed=1).select([T("a"), T("b")], CTX)
    assert sel.scores == {"a": 0.75, "b": 0.25}
    assert sel.reason in ("weighted random: weight 3, 75% chance", "weighted random: weight 1, 25% chance")


def test_target_weight_used_when_not_given() -> None:
    got = shares(W(seed=3), [T("a", 1.0), T("b", 4.0)])
    assert got["b"] == pytest.approx(0.8, abs=TOLERANCE)
    got = shares(W(weights={"a": 4}, seed=3), [T("a", 0.0), T("b", 1.0)])  # given beats Target
    assert got["a"] == pytest.approx(0.8, abs=TOLERANCE)


def test_zero_weight_never_chosen_unless_all_zero() -> None:
    s = W(weights={"a": 0, "b": 1, "c": 2}, seed=9)
    assert shares(s, [T("a"), T("b"), T("c")])["a"] == 0.0
    got = shares(W(weights={"a": 0, "b": 0}, seed=9), [T("a"), T("b")])
    assert got["a"] == pytest.approx(0.5, abs=TOLERANCE)
    assert "uniform" in W(weights={"a": 0}, seed=9).select([T("a")], CTX).reason


def test_replicas_share_their_models_weight() -> None:
    ts = [T("a"), T("a#1", replica=1), T("b")]
    got = shares(W(seed=5), ts)
    assert got["a"] + got["a#1"] == pytest.approx(0.5, abs=TOLERANCE)


def test_degraded_only_when_no_healthy_target_has_weight() -> None:
    s = W(seed=11)
    got = shares(s, [T("a", 5.0, degraded=True), T("b", 1.0)], 300)
    assert got["b"] == 1.0
    got = shares(s, [T("a", 5.0, degraded=True), T("b", 0.0)], 300)
    assert got["a"] == 1.0  # zero weight means never; degraded means "prefer others"


def test_seed_reproducible_and_rng_injectable() -> None:
    ts = [T("a"), T("b"), T("c")]
    one = [W(seed=123).select(ts, CTX).key for _ in range(1)]
    s1, s2 = W(seed=123), W(seed=123)
    assert [s1.select(ts, CTX).key for _ in range(50)] == [s2.select(ts, CTX).key for _ in range(50)]
    assert one[0] == W(seed=123).select(ts, CTX).key
    s3, s4 = WeightedRandom(rng=random.Random(5)), WeightedRandom(rng=random.Random(5))
    assert [s3.select(ts, CTX).key for _ in range(50)] == [s4.select(ts, CTX).key for _ in range(50)]


def test_absurd_weights() -> None:
    s = W(seed=1)
    sel = s.select([T("a", 1e308), T("b", 1e308), T("c", float("nan")), T("d", float("inf"))], CTX)
    assert sel.key in ("a", "b") and sel.scores["a"] == pytest.approx(0.5)
