"""The one small interface every routing strategy implements, and the values it sees.

A strategy is pure: it looks only at the targets and the request context it is given (plus its own state,
changed only through its hooks), never at the clock, the registry or a worker. The router computes every
Target field from the pool, the stats and the quota manager before calling `select`.

Each strategy's parameters are a pydantic model in params.py (`Params`); the strategy is built from a validated
instance (`config`), and `params()` / `from_params()` derive from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from app.core.routing.strategies.params import NoParams, StrategyParams
from app.core.runtime.slots import SlotReport


@dataclass(frozen=True, slots=True)
class Target:
    """One place a request can go: a model, or one replica (worker) of a model."""

    key: str  # "model_id" for replica 0, "model_id#2" for replica 2
    model_id: str
    replica: int = 0
    in_flight: int = 0  # requests running or queued on it
    slots: int = 1  # requests it decodes at once (a worker's `parallel`); more than that wait
    pending_tokens: int = 0  # prompt tokens its worker has yet to evaluate (reported; 0 for a remote backend)
    memory_pressure: float = 0.0  # 0..1: the worker's RSS (or VRAM) against the budget; 0 when not loaded
    loaded: bool = False
    degraded: bool = False  # still usable, but strategies should prefer others
    weight: float = 1.0  # user-set weight of the model (weighted-random)
    quota_left: float = 1.0  # 0..1: the smaller of tokens and requests left this hour; 1.0 without a quota
    ttft_s: float | None = None  # EWMA time to first token; None without samples
    tpot_s: float | None = None  # EWMA time per output token; None without samples
    latency_samples: int = 0


@dataclass(frozen=True, slots=True)
class RouteContext:
    """What a strategy may know about the request."""

    text: str = ""  # the whole prompt as plain text (every message, in order) for prefix matching
    session_key: str | None = None  # the x-session-id header, else the `user` field
    user: str | None = None
    api_key_id: str | None = None  # the name of the caller's API key, never the key
    capabilities: frozenset[str] = frozenset()
    request_id: str = ""
    now: float = 0.0  # monotonic seconds, given by the router so strategies stay pure


@dataclass(frozen=True, slots=True)
class Selection:
    key: str  # the chosen Target.key
    reason: str  # one short sentence a user can read
    scores: Mapping[str, float] = field(default_factory=dict)  # per Target.key, higher is better
    detail: Mapping[str, Any] = field(default_factory=dict)  # strategy-specific facts (e.g. the A/B arm)


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    ttft_s: float | None = None
    duration_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the worker reused from its cache
    error: str | None = None
    crashed: bool = False  # ended by its local worker's death (which the worker's lifecycle counts, once)


class Strategy:
    """Base class: subclasses set `name` and `Params`, implement `select`, and may override the hooks (each
    does nothing by default, so the router calls them on every strategy)."""

    name: ClassVar[str]
    Params: ClassVar[type[StrategyParams]] = NoParams

    def __init__(self, config: StrategyParams | None = None) -> None:
        self.config = config if config is not None else self.Params()

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> Self:
        """Build from user parameters; InvalidValue (a ValueError) naming the bad parameter."""
        return cls(cls.Params.parse(cls.name, params))

    def params(self) -> dict[str, Any]:
        """The current parameters, JSON-serialisable, such that `from_params(params())` rebuilds it."""
        return self.config.dump()

    def select(self, targets: Sequence[Target], ctx: RouteContext) -> Selection:
        """Choose one of `targets` (never empty). Must not raise for any non-empty input."""
        raise NotImplementedError

    def on_start(self, target: Target, ctx: RouteContext) -> None:
        """The request was sent to `target`."""

    def on_complete(self, target: Target, ctx: RouteContext, outcome: Outcome) -> None:
        """The request finished (or failed)."""

    def on_report(self, key: str, report: SlotReport) -> None:
        """The target's local worker reported what its slots and cache hold (facts, where hooks predict)."""

    def forget(self, key: str) -> None:
        """The target's worker ended: drop what is believed about it (e.g. what its prompt cache holds)."""
