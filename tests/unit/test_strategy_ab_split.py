"""ab_test: stable hashed assignment (split within a stated tolerance), stickiness, fallbacks, validation."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from app.core.routing.strategies import RouteContext, Target
from app.core.routing.strategies.ab_split import ABTest, Arm, assign_arm, bucket

ARMS = [{"name": "control", "model_id": "small", "percent": 50}, {"name": "big", "model_id": "large", "percent": 50}]
TS = [Target("small", "small"), Target("large", "large"), Target("large#1", "large", replica=1, in_flight=2)]
N = 2000
TOLERANCE = 0.05  # binomial sd at p=0.5, n=2000 is ~0.011: this is ~4.5 sd


def ab(experiment_id: str, arms: object, **params: object) -> ABTest:
    return ABTest.from_params({"experiment_id": experiment_id, "arms": arms, **params})


def test_fifty_fifty_over_distinct_sessions() -> None:
    s = ab("exp-1", ARMS)
    arms = Counter(s.select(TS, RouteContext(session_key=f"session-{i}")).detail["arm"] for i in range(N))
    assert arms["control"] / N == pytest.approx(0.5, abs=TOLERANCE)
    assert arms["control"] + arms["big"] == N


def test_uneven_split() -> None:
    arms = [{"name": "a", "model_id": "small", "percent": 90}, {"name": "b", "model_id": "large", "percent": 10}]
    s = ab("exp-2", arms)
    counts = Counter(s.select(TS, RouteContext(user=f"user-{i}")).detail["arm"] for i in range(N))
    assert counts["b"] / N == pytest.approx(0.1, abs=TOLERANCE)


def test_sticky_per_session_and_across_instances() -> None:
    s = ab("exp-1", ARMS)
    for i in range(50):
        ctx = RouteContext(session_key=f"session-{i}", request_id=f"r{i}")
        arm = s.select(TS, ctx).detail["arm"]
        for j in range(5):
            assert s.select(TS, RouteContext(session_key=f"session-{i}", request_id=f"x{j}")).detail["arm"] == arm
        assert ab("exp-1", ARMS).select(TS, ctx).detail["arm"] == arm  # a stable hash, no process salt
        assert assign_arm("exp-1", f"session-{i}", ab("exp-1", ARMS).config.arms).name == arm


def test_selection_detail_reason_and_scores() -> None:
    s = ab("exp-1", ARMS)
    ctx = next(RouteContext(session_key=f"s{i}") for i in range(100)
               if assign_arm("exp-1", f"s{i}", s.config.arms).name == "big")
    sel = s.select(TS, ctx)
    assert sel.key == "large"  # the less loaded replica of the arm's model
    assert sel.detail == {"experiment_id": "exp-1", "arm": "big"}
    assert sel.reason == "A/B exp-1: arm big (large)"
    assert min(sel.scores["large"], sel.scores["large#1"]) > sel.scores["small"]


def test_key_order_session_then_user_then_request() -> None:
    arms = ab("e", ARMS).config.arms
    s = ab("e", ARMS)
    assert s.select(TS, RouteContext(session_key="k", user="u", request_id="r")).detail["arm"] == \
        assign_arm("e", "k", arms).name
    assert s.select(TS, RouteContext(user="u", request_id="r")).detail["arm"] == assign_arm("e", "u", arms).name
    assert s.select(TS, RouteContext(request_id="r")).detail["arm"] == assign_arm("e", "r", arms).name
    # No key at all: the seeded random.Random decides, reproducibly.
    a = [ab("e", ARMS, seed=4).select(TS, RouteContext()).detail["arm"] for _ in range(1)]
    b = ab("e", ARMS, seed=4)
    assert [b.select(TS, RouteContext()).detail["arm"] for _ in range(1)] == a


def test_assign_arm_is_pure_and_takes_any_arm_like() -> None:
    @dataclass
    class OtherArm:  # e.g. app.core.observe.experiments.Arm
        name: str
        model_id: str
        percent: float

    mine = [Arm("a", "m1", 30.0), Arm("b", "m2", 70.0)]
    theirs = [OtherArm("a", "m1", 30.0), OtherArm("b", "m2", 70.0)]
    for key in ("x", "y", "z", "session-1"):
        assert assign_arm("e", key, mine).name == assign_arm("e", key, theirs).name
        assert 0 <= bucket("e", key) < 10_000
    assert bucket("e", "x") == bucket("e", "x") != bucket("f", "x")
    counts = Counter(assign_arm("e", f"k{i}", mine).name for i in range(N))
    assert counts["a"] / N == pytest.approx(0.3, abs=TOLERANCE)


def test_arm_model_missing_falls_back_to_first_present_arm() -> None:
    s = ab("exp-1", ARMS)
    only_small = [Target("small", "small"), Target("other", "other")]
    ctx = next(RouteContext(session_key=f"s{i}") for i in range(100)
               if assign_arm("exp-1", f"s{i}", s.config.arms).name == "big")
    sel = s.select(only_small, ctx)
    assert sel.key == "small"
    assert sel.detail == {"experiment_id": "exp-1", "arm": "control", "assigned_arm": "big"}
    assert "arm big's model large has no target; using arm control" in sel.reason
    sel = s.select([Target("x", "x", in_flight=1), Target("y", "y")], ctx)
    assert sel.key == "y" and sel.detail["arm"] is None and "no arm's model has a target; least loaded" in sel.reason


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ([{"name": "a", "model_id": "m", "percent": 100}], "at least 2"),
        ([{"name": "a", "model_id": "m", "percent": 60}, {"name": "b", "model_id": "n", "percent": 30}],
         "sum to 100"),
        ([{"name": "a", "model_id": "m", "percent": 100}, {"name": "b", "model_id": "n", "percent": 0}],
         r"arms\[1\]\.percent"),
        ([{"name": "a", "model_id": "m", "percent": 50}, {"name": "a", "model_id": "n", "percent": 50}],
         r"arms\[1\]\.name: 'a' is used twice"),
        ([{"name": "a", "model_id": "", "percent": 50}, {"name": "b", "model_id": "n", "percent": 50}],
         r"arms\[0\]\.model_id"),
        ([{"name": "a", "model_id": "m", "percent": 50}, {"name": "b", "model_id": "n", "percent": "50"}],
         r"arms\[1\]\.percent"),
        ("a:50,b:50", "arms must be a list"),
    ],
)
def test_validation(arms: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ABTest.from_params({"experiment_id": "e", "arms": arms})


def test_percent_sum_tolerance() -> None:
    third = 100 / 3
    arms = [{"name": n, "model_id": n, "percent": third} for n in "abc"]
    assert len(ab("e", arms).config.arms) == 3
    with pytest.raises(ValueError, match="missing parameter arms"):
        ABTest.from_params({"experiment_id": "e"})
