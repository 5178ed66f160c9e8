"""Small helpers every strategy shares: the degraded penalty and favour bonus, load, turn-taking, parameter checks.

Scores (higher is better): each strategy's own measure in [0, 1]; a degraded target gets DEGRADED_PENALTY
subtracted, and a target favoured by a rule (a pin, a sticky session, an A/B arm) gets FAVOUR_BONUS added. So
a favoured healthy target scores in (1, 2], a degraded one never above what it would score healthy, and for
strategies without rules every healthy target scores above every degraded one.
Strategies that run over every target inline the penalty (`- DEGRADED_PENALTY if t.degraded`) in their one
scoring pass instead of calling `penalise`: at 100 targets each extra pass costs several microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from app.core.routing.strategies.base import Target
from app.core.errors import InvalidValue

DEGRADED_PENALTY = 1.0
FAVOUR_BONUS = 1.0
TIE_EPS = 1e-9  # loads closer than this count as equal in reasons


def unit(x: float) -> float:
    """Clamp to [0, 1]; NaN counts as 0 (a router bug must not crash or skew a decision)."""
    if 0.0 <= x <= 1.0:
        return x
    return 1.0 if x > 1.0 else 0.0  # NaN fails both comparisons and lands here as 0


def finite_or(x: float | None, default: float | None) -> float | None:
    """x when it is a finite number >= 0, else `default` (None, NaN, inf and negatives are not measurements)."""
    if x is None or not (0.0 <= x < math.inf):
        return default
    return x


def load(t: Target, memory_weight: float) -> float:
    """Requests in flight plus memory pressure: a fully pressured worker counts like `memory_weight` requests."""
    n = t.in_flight if t.in_flight > 0 else 0
    return n + memory_weight * unit(t.memory_pressure)


def penalise(scores: dict[str, float], targets: Sequence[Target]) -> dict[str, float]:
    """Subtract the degraded penalty in place from scores computed without it; returns `scores`."""
    for t in targets:
        if t.degraded:
            scores[t.key] -= DEGRADED_PENALTY
    return scores


def favour(scores: dict[str, float], favoured: Iterable[str]) -> dict[str, float]:
    """Add the favour bonus in place to the favoured keys present in `scores`; returns `scores`."""
    for k in favoured:
        if k in scores:
            scores[k] += FAVOUR_BONUS
    return scores


def next_in_turn(keys: Iterable[str], last: str | None) -> str:
    """The first key after `last` in sorted order, wrapping around: fair rotation even when the set changes."""
    ordered = sorted(keys)
    if last is not None:
        for k in ordered:
            if k > last:
                return k
    return ordered[0]


def pct(x: float) -> str:
    return f"{x * 100:.0f}%"


# --- parameters -------------------------------------------------------------------------------------------


def check_params(strategy: str, params: Any, allowed: Iterable[str]) -> Mapping[str, Any]:
    """Reject a non-mapping or unknown parameter names, naming them."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise InvalidValue(f"{strategy} parameters must be an object (got {type(params).__name__})")
    allowed = set(allowed)
    unknown = sorted(str(k) for k in params if k not in allowed)
    if unknown:
        choices = ", ".join(sorted(allowed)) or "none"
        raise InvalidValue(f"{strategy}: unknown parameter {', '.join(unknown)} (allowed: {choices})")
    return params


def number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_exclusive: bool = False,
) -> float:
    """A finite float within bounds, or ValueError naming `name`. bool is not a number here."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidValue(f"{name} must be a number (got {value!r})")
    v = float(value)
    if not math.isfinite(v):
        raise InvalidValue(f"{name} must be finite (got {value!r})")
    if minimum is not None and (v <= minimum if min_exclusive else v < minimum):
        raise InvalidValue(f"{name} must be {'>' if min_exclusive else '>='} {minimum:g} (got {value!r})")
    if maximum is not None and v > maximum:
        raise InvalidValue(f"{name} must be <= {maximum:g} (got {value!r})")
    return v


def integer(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int within bounds (a float with an integral value, as JSON may give, is accepted)."""
    v = number(name, value, minimum=minimum, maximum=maximum)
    if not v.is_integer():
        raise InvalidValue(f"{name} must be a whole number (got {value!r})")
    return int(v)


def text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidValue(f"{name} must be a non-empty string (got {value!r})")
    return value


def seed_param(value: Any) -> int | None:
    if value is None:
        return None
    return integer("seed", value)
