"""Strategy parameters (params.py): bounds as declared, unknown and missing names named, JSON round trips, and
the form description `fields` gives, checked against what validation really does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from app.core.errors import InvalidValue
from app.core.routing.strategies import STRATEGIES, build, names, param_fields
from app.core.routing.strategies.params import (
    CacheAwareParams,
    LeastLoadedParams,
    NoParams,
    ParamField,
    StrategyParams,
    fields,
    parse_arms,
)

ARMS = [{"name": "a", "model_id": "m0", "percent": 50}, {"name": "b", "model_id": "m1", "percent": 50}]
REQUIRED = {"ab_test": {"experiment_id": "exp-1", "arms": ARMS}}  # what a strategy cannot do without


def bounded() -> list[tuple[str, ParamField]]:
    return [(name, f) for name in names() for f in param_fields(name) if f.minimum is not None or f.maximum is not None]


def test_fields_describe_every_parameter_in_order() -> None:
    for name, cls in STRATEGIES.items():
        got = param_fields(name)
        assert [f.name for f in got] == list(cls.Params.model_fields)
        assert all(f.title and f.description for f in got), name
        defaults = build(name, REQUIRED.get(name)).params()
        assert [f.name for f in got] == list(defaults)
        for f in got:
            assert f.required == (f.name in REQUIRED.get(name, {}))
            if not f.required:
                assert f.default == defaults[f.name], (name, f.name)


def test_fields_kinds_and_bounds() -> None:
    by_name = {f.name: f for f in param_fields("cache_aware")}
    assert by_name["cache_threshold"] == ParamField(
        "cache_threshold", "number", "Cache threshold", "share of the prompt a worker must already hold to win on "
        "its cache", 0.5, minimum=0.0, maximum=1.0)
    assert by_name["max_chars_per_target"].kind == "integer" and by_name["max_chars_per_target"].minimum == 1
    assert by_name["correction_alpha"].exclusive_minimum and by_name["correction_alpha"].minimum == 0.0
    assert by_name["balance_abs_threshold"].maximum is None
    affinity = {f.name: f for f in param_fields("affinity")}
    assert affinity["pins"].kind == "list" and affinity["pins"].default == []
    weighted = {f.name: f for f in param_fields("weighted_random")}
    assert weighted["weights"].kind == "mapping" and weighted["weights"].default == {}
    assert weighted["seed"] == ParamField("seed", "integer", "Seed", weighted["seed"].description, None, optional=True)
    ab = {f.name: f for f in param_fields("ab_test")}
    assert ab["experiment_id"].kind == "text" and ab["experiment_id"].required and ab["arms"].required
    assert param_fields("round_robin") == [] and param_fields("quota_aware") == []
    with pytest.raises(InvalidValue, match="unknown strategy 'fastest'"):
        param_fields("fastest")


def test_fields_refuse_a_type_no_form_can_show() -> None:
    class Odd(StrategyParams):
        flag: bool = False

    with pytest.raises(TypeError, match="flag|bool"):
        fields(Odd)


@pytest.mark.parametrize(("name", "field"), bounded(), ids=lambda x: x if isinstance(x, str) else x.name)
def test_bounds_are_what_fields_say(name: str, field: ParamField) -> None:
    base = REQUIRED.get(name, {})
    step = 1 if field.kind == "integer" else 1e-6

    def accepted(value: float) -> bool:
        try:
            build(name, {**base, field.name: value})
        except InvalidValue as exc:
            assert field.name in str(exc)
            return False
        return True

    if field.minimum is not None:
        assert accepted(field.minimum) != field.exclusive_minimum
        assert not accepted(field.minimum - step)
        assert accepted(field.minimum + step)
    if field.maximum is not None:
        assert accepted(field.maximum)
        assert not accepted(field.maximum + max(step, field.maximum * 1e-6))


@pytest.mark.parametrize("name", names())
def test_unknown_parameter_named_with_the_allowed_ones(name: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        build(name, {**REQUIRED.get(name, {}), "colour": "red"})
    message = str(caught.value)
    if STRATEGIES[name].Params.model_fields:
        assert message.startswith(f"{name}: unknown parameter colour (allowed: ")
        assert all(f in message for f in STRATEGIES[name].Params.model_fields)
    else:
        assert message == f"{name} takes no parameters (got colour)"


@pytest.mark.parametrize("name", names())
def test_json_round_trip(name: str) -> None:
    strategy = build(name, REQUIRED.get(name))
    saved = json.loads(json.dumps(strategy.params()))  # as the settings store keeps it
    again = type(strategy).from_params(saved)
    assert again.params() == strategy.params() and again.config == strategy.config


def test_every_bad_parameter_is_named_at_once() -> None:
    with pytest.raises(InvalidValue) as caught:
        build("cache_aware", {"cache_threshold": 2, "memory_weight": -1, "bogus": 0})
    message = str(caught.value)
    assert "cache_threshold" in message and "memory_weight" in message and "bogus" in message
    with pytest.raises(InvalidValue, match="missing parameter experiment_id.*missing parameter arms"):
        build("ab_test", {})


@pytest.mark.parametrize("bad", [True, "2", None, float("nan"), float("inf"), [2]])
def test_numbers_are_numbers(bad: Any) -> None:
    with pytest.raises(InvalidValue, match="memory_weight"):
        LeastLoadedParams.parse("least_loaded", {"memory_weight": bad})
    with pytest.raises(InvalidValue, match="max_chars_per_target"):
        CacheAwareParams.parse("cache_aware", {"max_chars_per_target": bad})


def test_whole_floats_count_as_integers() -> None:
    parsed = CacheAwareParams.parse("cache_aware", {"max_chars_per_target": 5000.0, "balance_abs_threshold": 3})
    assert parsed.max_chars_per_target == 5000 and type(parsed.max_chars_per_target) is int
    assert parsed.dump()["balance_abs_threshold"] == 3.0
    with pytest.raises(InvalidValue, match="max_chars_per_target"):
        CacheAwareParams.parse("cache_aware", {"max_chars_per_target": 5000.5})


def test_parameters_are_frozen_and_errors_are_invalid_values() -> None:
    parsed = LeastLoadedParams.parse("least_loaded", None)
    assert parsed == LeastLoadedParams() and parsed.memory_weight == 2.0
    with pytest.raises(ValidationError):
        parsed.memory_weight = 3.0  # type: ignore[misc]
    with pytest.raises(InvalidValue, match="least_loaded parameters must be an object"):
        LeastLoadedParams.parse("least_loaded", "memory_weight=2")
    assert NoParams.parse("round_robin", {}) == NoParams()
    assert issubclass(InvalidValue, ValueError)


def test_nested_values_named_by_their_place() -> None:
    with pytest.raises(InvalidValue, match=r"pins\[1\]\.kind"):
        build("affinity", {"pins": [{"kind": "user", "value": "a", "model_id": "m"},
                                    {"kind": "team", "value": "b", "model_id": "m"}]})
    with pytest.raises(InvalidValue, match=r"pins must be a list"):
        build("affinity", {"pins": {"kind": "user", "value": "a", "model_id": "m"}})
    with pytest.raises(InvalidValue, match=r"weights\['m-1'\]"):
        build("weighted_random", {"weights": {"m-1": -2}})
    assert build("weighted_random", {"weights": None}).params()["weights"] == {}


def test_parse_arms_alone() -> None:
    arms = parse_arms(ARMS)
    assert [(a.name, a.model_id, a.percent) for a in arms] == [("a", "m0", 50.0), ("b", "m1", 50.0)]
    assert parse_arms(arms) == arms  # Arm instances are validated again, and pass
    with pytest.raises(InvalidValue, match=r"arms\[0\]\.percent"):
        parse_arms([{**ARMS[0], "percent": 0}, {**ARMS[1], "percent": 100}])
    with pytest.raises(InvalidValue, match=r"arms\[1\]: unknown field colour"):
        parse_arms([ARMS[0], {**ARMS[1], "colour": "red"}])
    with pytest.raises(InvalidValue, match="sum to 100"):
        parse_arms([ARMS[0], {**ARMS[1], "percent": 40}])
