"""latency_based: the target with the lowest expected latency, ttft + expected_tokens * tpot, from the router's
EWMAs.

Exploration, so an early lucky sample does not make a target "fastest forever":
- a target with fewer than `min_samples` samples (or no ttft yet) is tried first, fewest samples first, but only
  while it has nothing in flight, so a burst does not all land on one unmeasured target;
- every `explore_every`-th decision goes to the least-sampled target.
Score = 1 / (1 + expected seconds): 1.0 for an instant answer, 0.5 for one second; 0 while unmeasured; less the
degraded penalty. No division by zero anywhere: ttft None, 0.0 or all equal are all fine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from app.core.routing.strategies.base import RouteContext, Selection, Strategy, Target
from app.core.routing.strategies.common import DEGRADED_PENALTY, next_in_turn, penalise
from app.core.routing.strategies.params import LatencyBasedParams

_MAX_S = 1e9  # seconds; larger latencies are nonsense (and 1e308 * 64 = inf would turn scores into NaN)


class LatencyBased(Strategy):
    name = "latency_based"
    Params = LatencyBasedParams
    config: LatencyBasedParams

    def __init__(self, config: LatencyBasedParams | None = None) -> None:
        super().__init__(config)
        self._decisions = 0  # counted in on_start
        self._last: str | None = None  # for turn-taking among exact ties

    def cost(self, t: Target) -> float | None:
        """Expected seconds for a typical answer, None while unmeasured. A ttft or tpot outside [0, 1e9) s is not
        a measurement: such a ttft counts as none, such a tpot as 0, so costs stay finite."""
        ttft, tpot = t.ttft_s, t.tpot_s
        if t.latency_samples < self.config.min_samples or ttft is None or not 0.0 <= ttft < _MAX_S:
            return None
        return ttft + self.config.expected_tokens * (tpot if tpot is not None and 0.0 <= tpot < _MAX_S else 0.0)

    def select(self, targets: Sequence[Target], ctx: RouteContext) -> Selection:
        costs = [self.cost(t) for t in targets]
        scores = penalise({t.key: 0.0 if c is None else 1.0 / (1.0 + c) for t, c in zip(targets, costs)}, targets)
        chosen, reason = self._choose(targets, costs, scores)
        return Selection(chosen.key, reason, scores)

    def _choose(self, targets: Sequence[Target], costs: Sequence[float | None],
                scores: Mapping[str, float]) -> tuple[Target, str]:
        if len(targets) == 1:
            return targets[0], "only target"
        any_healthy = not all(t.degraded for t in targets)  # degraded targets only when no healthy one exists
        # An unmeasured target with nothing in flight goes first (so a burst does not all land on it).
        idle = [t for t, c in zip(targets, costs)
                if c is None and t.in_flight <= 0 and not (any_healthy and t.degraded)]
        if idle:
            chosen = min(idle, key=lambda t: (max(t.latency_samples, 0), t.key))
            return chosen, (f"exploring: {chosen.key} has {max(chosen.latency_samples, 0)} of "
                            f"{self.config.min_samples} samples")
        pool = [t for t in targets if not t.degraded] if any_healthy else targets
        every = self.config.explore_every
        if every and (self._decisions + 1) % every == 0:
            chosen = min(pool, key=lambda t: (max(t.latency_samples, 0), max(t.in_flight, 0), t.key))
            return chosen, f"periodic exploration (every {every}th): {chosen.key} has the fewest samples"
        values = list(scores.values())  # aligned with targets (their keys are unique)
        top = max(values)
        # No healthy target measured yet (their first requests are out), or nothing measured at all.
        if top <= 0.0 and (any_healthy or top <= -DEGRADED_PENALTY):
            chosen = min(pool, key=lambda t: (max(t.in_flight, 0), t.key))
            return chosen, "no latency measured yet: fewest in flight"
        if values.count(top) > 1:
            key = next_in_turn([t.key for t, v in zip(targets, values) if v == top], self._last)
            chosen = targets[list(scores).index(key)]
            return chosen, f"fastest: ~{_ms(self.cost(chosen))} expected, tied, taking turns"
        i = values.index(top)
        values[i] = -float("inf")
        runner = targets[values.index(max(values))]
        c, c2 = costs[i], self.cost(runner)
        if c2 is None:
            return targets[i], f"fastest: ~{_ms(c)} expected (the only one measured)"
        return targets[i], f"fastest: ~{_ms(c)} expected vs ~{_ms(c2)} on {runner.key}"

    def on_start(self, target: Target, ctx: RouteContext) -> None:
        self._decisions += 1
        self._last = target.key


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"
