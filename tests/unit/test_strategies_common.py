"""Every strategy: the factory, parameter round-trips and checks, and properties over random target lists."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.routing.strategies import STRATEGIES, Outcome, RouteContext, Strategy, Target, build, names
from app.core.routing.strategies.common import DEGRADED_PENALTY, load, next_in_turn
from app.core.routing.strategies.least_loaded import LeastLoaded
from app.core.routing.strategies.params import NoParams
from tests.support.examples import examples

AB_PARAMS = {
    "experiment_id": "exp-1",
    "arms": [{"name": "a", "model_id": "m0", "percent": 50}, {"name": "b", "model_id": "m1", "percent": 50}],
}
# Parameters that make each strategy do something non-default (and, for ab_test, the required ones).
SAMPLE_PARAMS: dict[str, dict[str, Any]] = {
    "round_robin": {},
    "least_loaded": {"memory_weight": 3.5},
    "cache_aware": {"cache_threshold": 0.6, "balance_abs_threshold": 8, "balance_rel_threshold": 2.0,
                    "max_chars_per_target": 50_000, "correction_alpha": 0.5, "memory_weight": 1.0},
    "quota_aware": {},
    "latency_based": {"expected_tokens": 128, "min_samples": 5, "explore_every": 10},
    "affinity": {"ttl_s": 60, "max_sessions": 10, "pins": [{"kind": "user", "value": "ann", "model_id": "m1"}],
                 "memory_weight": 0.5},
    "weighted_random": {"weights": {"m0": 3, "m1": 1}, "seed": 7},
    "ab_test": {**AB_PARAMS, "seed": 3},
}


def make(name: str) -> Strategy:
    return build(name, SAMPLE_PARAMS[name])


def test_names_in_order() -> None:
    assert names() == ["round_robin", "least_loaded", "cache_aware", "quota_aware", "latency_based", "affinity",
                       "weighted_random", "ab_test"]
    assert list(STRATEGIES) == names()
    for name, cls in STRATEGIES.items():
        assert cls.name == name and issubclass(cls, Strategy)


def test_unknown_name_rejected() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'fastest'; choose one of: round_robin, least_loaded"):
        build("fastest")
    with pytest.raises(ValueError, match="unknown strategy"):
        build(None)  # type: ignore[arg-type]


def test_build_with_defaults() -> None:
    for name in names():
        if name != "ab_test":
            assert type(build(name)).name == name
    with pytest.raises(ValueError, match="experiment_id"):
        build("ab_test")


@pytest.mark.parametrize("name", list(SAMPLE_PARAMS))
def test_params_round_trip(name: str) -> None:
    s = make(name)
    p = s.params()
    assert s.params() == type(s).from_params(p).params()
    for key, value in SAMPLE_PARAMS[name].items():
        assert p[key] == value
    assert json.loads(json.dumps(p)) == p  # JSON-serialisable


@pytest.mark.parametrize("name", list(SAMPLE_PARAMS))
def test_unknown_parameter_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="bogus"):
        build(name, {**SAMPLE_PARAMS[name], "bogus": 1})


@pytest.mark.parametrize(
    ("name", "params", "bad"),
    [
        ("least_loaded", {"memory_weight": -1}, "memory_weight"),
        ("least_loaded", {"memory_weight": "2"}, "memory_weight"),
        ("least_loaded", {"memory_weight": True}, "memory_weight"),
        ("least_loaded", {"memory_weight": float("nan")}, "memory_weight"),
        ("cache_aware", {"cache_threshold": 1.5}, "cache_threshold"),
        ("cache_aware", {"balance_abs_threshold": -1}, "balance_abs_threshold"),
        ("cache_aware", {"balance_rel_threshold": "x"}, "balance_rel_threshold"),
        ("cache_aware", {"max_chars_per_target": 0}, "max_chars_per_target"),
        ("cache_aware", {"max_chars_per_target": 10.5}, "max_chars_per_target"),
        ("cache_aware", {"correction_alpha": 0}, "correction_alpha"),
        ("latency_based", {"expected_tokens": -1}, "expected_tokens"),
        ("latency_based", {"min_samples": 1.5}, "min_samples"),
        ("latency_based", {"explore_every": -2}, "explore_every"),
        ("affinity", {"ttl_s": 0}, "ttl_s"),
        ("affinity", {"max_sessions": 0}, "max_sessions"),
        ("affinity", {"pins": [{"kind": "team", "value": "x", "model_id": "m"}]}, "pins"),
        ("affinity", {"pins": [{"kind": "user", "value": "", "model_id": "m"}]}, r"pins\[0\]\.value"),
        ("affinity", {"pins": "user=ann"}, "pins"),
        ("weighted_random", {"weights": {"m0": -1}}, "weights"),
        ("weighted_random", {"weights": [1, 2]}, "weights"),
        ("weighted_random", {"seed": "abc"}, "seed"),
        ("ab_test", {**AB_PARAMS, "experiment_id": ""}, "experiment_id"),
        ("ab_test", {"experiment_id": "e", "arms": AB_PARAMS["arms"][:1]}, "arms"),
        ("ab_test", {**AB_PARAMS, "seed": 1.5}, "seed"),
    ],
)
def test_bad_parameter_named(name: str, params: dict[str, Any], bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        build(name, params)


def test_parameters_must_be_a_mapping() -> None:
    with pytest.raises(ValueError, match="must be an object"):
        build("least_loaded", ["memory_weight"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="takes no parameters"):
        build("round_robin", {"x": 1})
    assert NoParams.parse("x", None) == NoParams()


def test_shared_helpers() -> None:
    assert next_in_turn(["b", "a", "c"], None) == "a"
    assert next_in_turn(["b", "a", "c"], "a") == "b"
    assert next_in_turn(["b", "a", "c"], "c") == "a"
    assert next_in_turn(["b", "c"], "a#9") == "b"  # the last one is gone: the next in order
    t = Target("m", "m", in_flight=2, memory_pressure=0.5)
    assert load(t, 2.0) == 3.0
    assert load(Target("m", "m", in_flight=-3, memory_pressure=float("nan")), 2.0) == 0.0
    assert load(Target("m", "m", memory_pressure=7.0), 2.0) == 2.0


def test_least_loaded_scores_are_its_load() -> None:
    ts = [Target(f"m{i}", "m", in_flight=i - 2, memory_pressure=p, degraded=i == 3)
          for i, p in enumerate([0.0, 0.3, 1.0, 2.0, float("nan"), -1.0])]
    scores = LeastLoaded.from_params({"memory_weight": 1.5}).scores(ts)
    for t in ts:
        expected = 1 / (1 + load(t, 1.5)) - (DEGRADED_PENALTY if t.degraded else 0.0)
        assert scores[t.key] == pytest.approx(expected)


def ctx(i: int = 0, **kw: Any) -> RouteContext:
    base = {"text": "system: be brief\nuser: hello", "session_key": "s1", "user": "ann", "request_id": f"r{i}",
            "now": float(i)}
    base.update(kw)
    return RouteContext(**base)


@pytest.mark.parametrize("name", list(SAMPLE_PARAMS))
def test_single_target(name: str) -> None:
    s = make(name)
    for t in (Target("m0", "m0"), Target("zz", "zz", degraded=True, ttft_s=None), Target("m1#1", "m1", replica=1)):
        for i in range(3):
            sel = s.select([t], ctx(i))
            assert sel.key == t.key and sel.reason and set(sel.scores) == {t.key}
            s.on_start(t, ctx(i))
            s.on_complete(t, ctx(i), Outcome(ok=True, prompt_tokens=10, cached_tokens=5))


@pytest.mark.parametrize("name", list(SAMPLE_PARAMS))
def test_degraded_penalised_in_scores(name: str) -> None:
    # Two targets alike but for degraded: the degraded one scores lower, and is not chosen.
    good = Target("m0", "m0", ttft_s=0.1, tpot_s=0.01, latency_samples=10)
    bad = Target("m0#1", "m0", replica=1, degraded=True, ttft_s=0.1, tpot_s=0.01, latency_samples=10)
    s = make(name)
    for i in range(5):
        sel = s.select([bad, good], ctx(i, session_key=f"s{i}"))
        assert sel.scores["m0#1"] < sel.scores["m0"]
        assert sel.key == "m0"
        s.on_start(good, ctx(i, session_key=f"s{i}"))


@pytest.mark.parametrize("name", list(SAMPLE_PARAMS))
def test_all_degraded_and_no_latencies(name: str) -> None:
    ts = [Target(f"m{i}", f"m{i}", degraded=True, in_flight=i, ttft_s=None, tpot_s=None) for i in range(3)]
    s = make(name)
    for i in range(5):
        sel = s.select(ts, ctx(i))
        assert sel.key in {t.key for t in ts}
        s.on_start(next(t for t in ts if t.key == sel.key), ctx(i))


@pytest.mark.parametrize("name", list(SAMPLE_PARAMS))
def test_every_strategy_has_every_hook(name: str) -> None:
    # The router calls the hooks on whatever strategy is configured (no getattr): each one has all of them.
    s = make(name)
    t = Target("m0", "m0")
    s.on_start(t, ctx())
    s.on_complete(t, ctx(), Outcome(ok=True, prompt_tokens=10, cached_tokens=5))
    s.forget("m0")
    s.forget("never-seen")
    assert s.select([t], ctx(1)).key == "m0"


@pytest.mark.parametrize("name", [n for n in SAMPLE_PARAMS if n != "weighted_random"])
def test_select_alone_changes_nothing(name: str) -> None:
    # State moves only through the hooks (weighted_random's random.Random aside): two selects in a row agree.
    ts = [Target(f"m{i}", f"m{i}") for i in range(4)]
    s = make(name)
    assert s.select(ts, ctx()).key == s.select(ts, ctx()).key


# --- properties over random target lists ---------------------------------------------------------------

floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1))
latency = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 2))


@st.composite
def target_lists(draw: st.DrawFn) -> list[Target]:
    n = draw(st.integers(1, 12))
    out = []
    for i in range(n):
        model = f"m{draw(st.integers(0, 3))}"
        out.append(Target(
            key=f"{model}#{i}" if i else model,  # unique keys
            model_id=model,
            replica=i,
            in_flight=draw(st.integers(-2, 50)),
            memory_pressure=draw(floats),
            loaded=draw(st.booleans()),
            degraded=draw(st.booleans()),
            weight=draw(floats),
            quota_left=draw(floats),
            ttft_s=draw(latency),
            tpot_s=draw(latency),
            latency_samples=draw(st.integers(0, 10)),
        ))
    return out


contexts = st.builds(
    RouteContext,
    text=st.text(alphabet="ab \n", max_size=40),
    session_key=st.one_of(st.none(), st.sampled_from(["s1", "s2", "s3"])),
    user=st.one_of(st.none(), st.sampled_from(["ann", "bob"])),
    api_key_id=st.one_of(st.none(), st.sampled_from(["k1", "k2"])),
    capabilities=st.frozensets(st.sampled_from(["chat", "vision", "tools"])),
    request_id=st.sampled_from(["", "r1", "r2", "r3"]),
    now=st.floats(0, 1e6),
)
outcomes = st.builds(
    Outcome, ok=st.booleans(), prompt_tokens=st.integers(-5, 500), cached_tokens=st.integers(-5, 600),
)
# Strategies whose choice is healthy whenever some target is healthy, whatever else the targets say.
ALWAYS_HEALTHY_FIRST = {"round_robin", "least_loaded", "cache_aware", "latency_based"}


@pytest.mark.parametrize("name", list(SAMPLE_PARAMS))
@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(target_lists(), contexts, outcomes), min_size=1, max_size=8))
def test_never_raises_and_scores_every_target(
    name: str, steps: list[tuple[list[Target], RouteContext, Outcome]]
) -> None:
    s = make(name)
    for targets, c, outcome in steps:
        sel = s.select(targets, c)
        keys = {t.key for t in targets}
        assert sel.key in keys
        assert set(sel.scores) == keys
        assert all(math.isfinite(v) for v in sel.scores.values())
        assert isinstance(sel.reason, str) and 0 < len(sel.reason) <= 200
        if name in ALWAYS_HEALTHY_FIRST and any(not t.degraded for t in targets):
            assert not next(t for t in targets if t.key == sel.key).degraded
        chosen = next(t for t in targets if t.key == sel.key)
        s.on_start(chosen, c)
        s.on_complete(chosen, c, outcome)
