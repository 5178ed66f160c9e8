"""quota_aware: the target with the most quota left this hour; ties go to the one with fewer in flight.

Score = quota left (0..1] less the degraded penalty; a used-up quota scores -1 (below any target with quota,
degraded or not: it would be refused), still less the penalty when degraded. Full ties (same quota, same in
flight, e.g. no quotas configured at all) take turns, as in least_loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.core.routing.strategies.base import RouteContext, Selection, Strategy, Target
from app.core.routing.strategies.common import next_in_turn, pct, penalise, unit
from app.core.routing.strategies.params import NoParams

EXHAUSTED = -1.0


class QuotaAware(Strategy):
    name = "quota_aware"

    def __init__(self, config: NoParams | None = None) -> None:
        super().__init__(config)
        self._last: str | None = None  # for turn-taking among full ties

    def select(self, targets: Sequence[Target], ctx: RouteContext) -> Selection:
        scores = penalise({t.key: quota_score(t.quota_left) for t in targets}, targets)
        values = list(scores.values())
        top = max(values)
        if values.count(top) == 1:
            i = values.index(top)
            chosen = targets[i]
            values[i] = -float("inf")
            second = targets[values.index(max(values))] if len(targets) > 1 else None
            reason = f"most quota left: {pct(unit(chosen.quota_left))}"
            if second is not None:
                reason += f" vs {pct(unit(second.quota_left))} on {second.key}"
        else:
            tied = [targets[i] for i, v in enumerate(values) if v == top]
            flights = [max(t.in_flight, 0) for t in tied]
            fewest = min(flights)
            calm = [t for t, n in zip(tied, flights) if n == fewest]
            key = next_in_turn([t.key for t in calm], self._last) if len(calm) > 1 else calm[0].key
            chosen = next(t for t in calm if t.key == key)
            reason = f"most quota left ({pct(unit(chosen.quota_left))}, {len(tied)} tied): {fewest} in flight"
            if len(calm) > 1:
                reason += f", {len(calm)} tied, taking turns"
        if top <= EXHAUSTED:
            reason = "quota used up everywhere; " + reason
        return Selection(chosen.key, reason, scores)

    def on_start(self, target: Target, ctx: RouteContext) -> None:
        self._last = target.key


def quota_score(quota_left: float) -> float:
    """The quota left, clamped to 1; none (0, negative or NaN) is EXHAUSTED."""
    if quota_left > 1.0:
        return 1.0
    return quota_left if quota_left > 0.0 else EXHAUSTED
