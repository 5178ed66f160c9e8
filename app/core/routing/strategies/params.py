"""Every strategy's parameters, each declared once: type, bounds, default and description, as pydantic models.

A strategy class names its model (`Strategy.Params`) and is built from a validated instance; its `params()` is
that instance as JSON, so `from_params(params())` rebuilds it. `parse` turns user input into an instance, or an
InvalidValue naming every bad parameter; `fields` lists a model's parameters for a form.

    CacheAwareParams.parse("cache_aware", {"cache_threshold": 0.6})  ->  CacheAwareParams(cache_threshold=0.6, ...)
    fields(LeastLoadedParams)  ->  [ParamField(name="memory_weight", kind="number", default=2.0, minimum=0.0, ...)]
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self, Union, get_args, get_origin

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    with_config,
)
from pydantic_core import ErrorDetails, to_jsonable_python

from app.core.errors import InvalidValue


def _whole(value: Any) -> Any:
    """JSON may send 10.0 for 10: an integral float counts as that int (10.5 still fails)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Strict: a bool, or a string such as "2", is not a number here.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Integer = Annotated[int, BeforeValidator(_whole), Field(strict=True)]
Text = Annotated[str, Field(strict=True, min_length=1)]

MemoryWeight = Annotated[Number, Field(
    default=2.0, ge=0.0, le=1e6, title="Memory weight",
    description="a worker at full memory pressure counts like this many requests in flight")]
Seed = Annotated[Integer | None, Field(
    default=None, title="Seed", description="seeds the random choices, for reproducible runs (none: random)")]

PinKind = Literal["session", "user", "api_key", "capability"]
PIN_KINDS: tuple[str, ...] = get_args(PinKind)  # in precedence order

_VALUE_OBJECT = ConfigDict(extra="forbid", revalidate_instances="always")


@with_config(_VALUE_OBJECT)
@dataclass(frozen=True, slots=True)
class Pin:
    """Requests whose `kind` (session key, user, API key id, capability) is `value` go to `model_id`."""

    kind: PinKind
    value: Text
    model_id: Text


@with_config(_VALUE_OBJECT)
@dataclass(frozen=True, slots=True)
class Arm:
    """One arm of an A/B experiment: `percent` of the sessions go to `model_id`."""

    name: Text
    model_id: Text
    percent: Annotated[Number, Field(gt=0.0)]


def _unique_pins(pins: tuple[Pin, ...]) -> tuple[Pin, ...]:
    seen: set[tuple[str, str]] = set()
    for i, pin in enumerate(pins):
        if (pin.kind, pin.value) in seen:
            raise InvalidValue(f"pins[{i}]: {pin.kind} {pin.value!r} is pinned twice")
        seen.add((pin.kind, pin.value))
    return pins


def _list_of(name: str, fields: str) -> BeforeValidator:
    """Rejects a string or an object where a JSON list is wanted, with a message saying what the list holds."""
    def check(value: Any) -> Any:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise InvalidValue(f"{name} must be a list of {{{fields}}}")
        return value
    return BeforeValidator(check)


def _none_is_empty(value: Any) -> Any:
    """An explicit null for `weights` means none, as it always has."""
    return {} if value is None else value


def _arms_split(arms: tuple[Arm, ...]) -> tuple[Arm, ...]:
    """At least 2 arms with unique names whose percents sum to 100 (±1e-6)."""
    if len(arms) < 2:
        raise InvalidValue(f"arms: an experiment needs at least 2 (got {len(arms)})")
    names: set[str] = set()
    for i, arm in enumerate(arms):
        if arm.name in names:
            raise InvalidValue(f"arms[{i}].name: {arm.name!r} is used twice")
        names.add(arm.name)
    total = math.fsum(a.percent for a in arms)
    if abs(total - 100.0) > 1e-6:
        raise InvalidValue(f"arms: percents must sum to 100 (got {total:g})")
    return arms


Pins = Annotated[tuple[Pin, ...], _list_of("pins", "kind, value, model_id"), AfterValidator(_unique_pins)]
Arms = Annotated[tuple[Arm, ...], _list_of("arms", "name, model_id, percent"), AfterValidator(_arms_split)]


# --- the models -------------------------------------------------------------------------------------------


class StrategyParams(BaseModel):
    """Base of every strategy's parameters: frozen, and unknown names are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def parse(cls, strategy: str, raw: Any) -> Self:
        """Validated parameters from user input (None: the defaults); InvalidValue naming what is wrong."""
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise InvalidValue(f"{strategy} parameters must be an object (got {type(raw).__name__})")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise _invalid(exc, strategy, cls) from None

    def dump(self) -> dict[str, Any]:
        """As JSON values (tuples as lists, pins and arms as objects): what `params()` and the settings hold."""
        return self.model_dump(mode="json")


class NoParams(StrategyParams):
    """round_robin and quota_aware: nothing to set."""


class LeastLoadedParams(StrategyParams):
    memory_weight: MemoryWeight


class CacheAwareParams(StrategyParams):
    cache_threshold: Number = Field(
        0.5, ge=0.0, le=1.0, title="Cache threshold",
        description="share of the prompt a worker must already hold to win on its cache")
    balance_abs_threshold: Number = Field(
        4.0, ge=0.0, title="Imbalance: absolute",
        description="requests in flight between the busiest and the idlest worker before load wins")
    balance_rel_threshold: Number = Field(
        1.5, ge=0.0, title="Imbalance: relative", description="ratio busiest / idlest before load wins")
    max_chars_per_target: Integer = Field(
        1_000_000, ge=1, title="Prefix tree size", description="characters remembered per worker")
    correction_alpha: Number = Field(
        0.3, gt=0.0, le=1.0, title="Correction rate",
        description="how fast reported cache use corrects the prediction")
    memory_weight: MemoryWeight


class LatencyBasedParams(StrategyParams):
    expected_tokens: Number = Field(
        64.0, ge=0.0, le=1e6, title="Expected tokens",
        description="answer length used to weigh time per token against time to first token")
    min_samples: Integer = Field(
        3, ge=0, title="Samples before trusting", description="requests measured before a model's latency is used")
    explore_every: Integer = Field(
        20, ge=0, title="Explore every",
        description="every N-th request tries the model with the fewest samples (0: never)")


class AffinityParams(StrategyParams):
    ttl_s: Number = Field(1800.0, gt=0.0, title="Session TTL (s)", description="how long a session stays on its model")
    max_sessions: Integer = Field(
        100_000, ge=1, title="Sessions remembered", description="the least recently used are dropped beyond this")
    pins: Pins = Field((), title="Pins", description="session, user, API key or capability -> model")
    memory_weight: MemoryWeight


class WeightedRandomParams(StrategyParams):
    weights: Annotated[dict[Text, Annotated[Number, Field(ge=0.0)]], BeforeValidator(_none_is_empty)] = Field(
        default_factory=dict, title="Weights",
        description="model id -> weight; a model without one uses its own weight setting")
    seed: Seed


class ABTestParams(StrategyParams):
    experiment_id: Text = Field(title="Experiment", description="the experiment whose arms split the traffic")
    arms: Arms = Field(title="Arms", description="name, model id and percent of each arm; percents sum to 100")
    seed: Seed


_ARMS: TypeAdapter[tuple[Arm, ...]] = TypeAdapter(Arms)


def parse_arms(arms: Any) -> tuple[Arm, ...]:
    """Validated arms, as ab_test's `arms` parameter (mappings or Arm instances); InvalidValue naming the bad one."""
    try:
        return _ARMS.validate_python(arms)
    except ValidationError as exc:
        raise _invalid(exc, None, None, at=("arms",)) from None


# --- errors -----------------------------------------------------------------------------------------------


def _invalid(exc: ValidationError, strategy: str | None, model: type[StrategyParams] | None,
             at: tuple[str | int, ...] = ()) -> InvalidValue:
    """One InvalidValue naming every bad parameter, e.g. "cache_threshold must be <= 1.0 (got 1.5)"."""
    return InvalidValue("; ".join(_message(err, strategy, model, at) for err in exc.errors()))


def _message(err: ErrorDetails, strategy: str | None, model: type[StrategyParams] | None,
             at: tuple[str | int, ...]) -> str:
    loc = (*at, *(p for p in err["loc"] if p != "[key]"))
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, InvalidValue):  # our own validators word their message, location included
        return str(cause)
    where = _where(loc)
    allowed = list(model.model_fields) if model is not None and len(loc) == 1 else None  # None: not a parameter
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        if allowed is None:
            return f"{_where(loc[:-1])}: unknown field {loc[-1]}"
        if not allowed:
            return f"{strategy} takes no parameters (got {where})"
        return f"{strategy}: unknown parameter {where} (allowed: {', '.join(allowed)})"
    if err["type"] == "missing":
        return f"{where} is missing" if allowed is None else f"{strategy}: missing parameter {where}"
    bound = _BOUNDS.get(err["type"])
    if bound is not None:  # the wording the API has always used for a number out of bounds
        op, key = bound
        return f"{where} must be {op} {(err.get('ctx') or {}).get(key)} (got {err['input']!r})"
    msg = err["msg"]
    return f"{where}: {msg[:1].lower()}{msg[1:]} (got {err['input']!r})"


_BOUNDS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"), "less_than": ("<", "lt"),
           "less_than_equal": ("<=", "le")}


def _where(loc: Sequence[str | int]) -> str:
    """("pins", 0, "value") -> "pins[0].value"; a mapping key that is no name -> "weights['m-1']"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not out:
            out = part
        else:
            out += f".{part}" if part.isidentifier() else f"[{part!r}]"
    return out


# --- for forms --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParamField:
    """One parameter as a form shows it. `default` is a JSON value (None when required); the bounds are
    inclusive unless `exclusive_minimum`."""

    name: str
    kind: str  # "number" | "integer" | "text" | "list" (pins, arms) | "mapping" (weights)
    title: str
    description: str
    default: Any
    required: bool = False
    optional: bool = False  # None (JSON null) is a valid value, e.g. a seed
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False


def fields(model: type[StrategyParams]) -> list[ParamField]:
    """The model's parameters in declaration order, read from its pydantic fields."""
    out = []
    for name, info in model.model_fields.items():
        annotation, optional = _strip_none(info.annotation)
        minimum: float | None = None
        maximum: float | None = None
        exclusive = False
        for bound in info.metadata:
            if isinstance(bound, annotated_types.Ge):
                minimum = float(bound.ge)  # type: ignore[arg-type]
            elif isinstance(bound, annotated_types.Gt):
                minimum, exclusive = float(bound.gt), True  # type: ignore[arg-type]
            elif isinstance(bound, annotated_types.Le):
                maximum = float(bound.le)  # type: ignore[arg-type]
        required = info.is_required()
        out.append(ParamField(
            name=name, kind=_kind(annotation), title=info.title or name, description=info.description or "",
            default=None if required else to_jsonable_python(info.get_default(call_default_factory=True)),
            required=required, optional=optional, minimum=minimum, maximum=maximum, exclusive_minimum=exclusive,
        ))
    return out


def _strip_none(annotation: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); anything else -> (it, False)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _kind(annotation: Any) -> str:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation) or annotation
    if origin in (tuple, list):
        return "list"
    if origin is dict:
        return "mapping"
    kinds = {float: "number", int: "integer", str: "text"}
    if origin not in kinds:
        raise TypeError(f"no form kind for a parameter of type {annotation!r}")
    return kinds[origin]
