"""Routing strategies: one module per policy behind the small `Strategy` interface in base.py, and a factory.

    build("cache_aware", {"cache_threshold": 0.6})  ->  a CacheAware instance
    param_fields("least_loaded")  ->  [ParamField(name="memory_weight", kind="number", ...)], for a form
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.core.errors import InvalidValue
from app.core.routing.strategies.ab_split import ABTest, assign_arm
from app.core.routing.strategies.affinity import Affinity
from app.core.routing.strategies.base import Outcome, RouteContext, Selection, Strategy, Target
from app.core.routing.strategies.cache_aware import CacheAware
from app.core.routing.strategies.latency_based import LatencyBased
from app.core.routing.strategies.least_loaded import LeastLoaded
from app.core.routing.strategies.params import ParamField, fields
from app.core.routing.strategies.quota_aware import QuotaAware
from app.core.routing.strategies.round_robin import RoundRobin
from app.core.routing.strategies.weighted_random import WeightedRandom

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (RoundRobin, LeastLoaded, CacheAware, QuotaAware, LatencyBased, Affinity, WeightedRandom, ABTest)
}


def names() -> list[str]:
    return list(STRATEGIES)


def build(name: str, params: Mapping[str, Any] | None = None) -> Strategy:
    """A new strategy by name from user parameters; InvalidValue for an unknown name or bad parameters."""
    return _strategy(name).from_params(params)


def param_fields(name: str) -> list[ParamField]:
    """The strategy's parameters (name, kind, title, description, default, bounds), in declaration order."""
    return fields(_strategy(name).Params)


def _strategy(name: str) -> type[Strategy]:
    cls = STRATEGIES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise InvalidValue(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return cls


__all__ = [
    "STRATEGIES", "ABTest", "Affinity", "CacheAware", "LatencyBased", "LeastLoaded", "Outcome", "ParamField",
    "QuotaAware", "RouteContext", "RoundRobin", "Selection", "Strategy", "Target", "WeightedRandom", "assign_arm",
    "build", "names", "param_fields",
]
