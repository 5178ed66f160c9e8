"""Small helpers every strategy shares: the degraded penalty and favour bonus, load, turn-taking.

Scores (higher is better): each strategy's own measure in [0, 1]; a degraded target gets DEGRADED_PENALTY
subtracted, and a target favoured by a rule (a pin, a sticky session, an A/B arm) gets FAVOUR_BONUS added. So
a favoured healthy target scores in (1, 2], a degraded one never above what it would score healthy, and for
strategies without rules every healthy target scores above every degraded one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from app.core.routing.strategies.base import Target

DEGRADED_PENALTY = 1.0
FAVOUR_BONUS = 1.0
TIE_EPS = 1e-9  # loads closer than this count as equal in reasons
# Prompt tokens that weigh like one request in flight: about one decode step's worth (llama.cpp's batch of 512).
PREFILL_TOKENS = 512


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
    """Requests in flight per slot, plus prompt tokens still to evaluate, plus memory pressure: a worker decoding 4
    at once with 2 in flight is half as loaded as one with 1 of 1; each PREFILL_TOKENS of prompt its worker has
    yet to evaluate count as one more request per slot (a long prompt delays every slot); a fully pressured
    worker counts like `memory_weight` more requests per slot."""
    pressure = t.memory_pressure
    if not 0.0 <= pressure <= 1.0:  # rare (a bad reading); checked here first as this runs for every target
        pressure = unit(pressure)
    busy = (t.in_flight if t.in_flight > 0 else 0) + (t.pending_tokens / PREFILL_TOKENS if t.pending_tokens > 0 else 0)
    return (busy if t.slots <= 1 else busy / t.slots) + memory_weight * pressure


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
