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
from typing import Any

from app.core.routing.strategies.base import RouteContext, Selection, Strategy, Target
from app.core.routing.strategies.common import DEGRADED_PENALTY, check_params, integer, next_in_turn, number

_MAX_S = 1e9  # seconds; larger latencies are nonsense (and 1e308 * 64 = inf would turn scores into NaN)


class LatencyBased(Strategy):
    name = "latency_based"

    def __init__(self, expected_tokens: float = 64, min_samples: int = 3, explore_every: int = 20) -> None:
        self.expected_tokens = number("expected_tokens", expected_tokens, minimum=0.0, maximum=1e6)
        self.min_samples = integer("min_samples", min_samples, minimum=0)
        self.explore_every = integer("explore_every", explore_every, minimum=0)  # 0: never
        self._decisions = 0  # counted in on_start
        self._last: str | None = None  # for turn-taking among exact ties

    def cost(self, t: Target) -> float | None:
        """Expected seconds for a typical answer, None while unmeasured. A ttft or tpot outside [0, 1e9) s is not
        a measurement: such a ttft counts as none, such a tpot as 0, so costs stay finite."""
        ttft, tpot = t.ttft_s, t.tpot_s
        if t.latency_samples < self.min_samples or ttft is None or not 0.0 <= ttft < _MAX_S:
            return None
        return ttft + self.expected_tokens * (tpot if tpot is not None and 0.0 <= tpot < _MAX_S else 0.0)

    def select(self, targets: Sequence[Target], ctx: RouteContext) -> Selection:
        e, need, p = self.expected_tokens, self.min_samples, DEGRADED_PENALTY
        # `cost` inlined (every target, every request): 1 / (1 + cost) when measured, else 0.
        scores = {
            t.key: (
                1.0 / (1.0 + ttft + e * (tpot if (tpot := t.tpot_s) is not None and 0.0 <= tpot < _MAX_S else 0.0))
                if t.latency_samples >= need and (ttft := t.ttft_s) is not None and 0.0 <= ttft < _MAX_S
                else 0.0
            ) - (p if t.degraded else 0.0)
            for t in targets
        }
        chosen, reason = self._choose(targets, scores)
        return Selection(chosen.key, reason, scores)

    def _choose(self, targets: Sequence[Target], scores: Mapping[str, float]) -> tuple[Target, str]:
        if len(targets) == 1:
            return targets[0], "only target"
        values = list(scores.values())  # aligned with targets (their keys are unique)
        any_healthy: bool | None = None  # worked out only off the common path
        # A measured target scores > 0 (healthy) or > -1 (degraded), so exact 0s and -1s flag possible unmeasured
        # ones; the precise check runs only then.
        if values.count(0.0) or values.count(-DEGRADED_PENALTY):
            idle = [t for t, v in zip(targets, values)
                    if (v == 0.0 or v == -DEGRADED_PENALTY) and t.in_flight <= 0 and self.cost(t) is None]
            if idle:
                any_healthy = False in [t.degraded for t in targets]
                fresh = [(max(t.latency_samples, 0), t.key, i) for i, t in enumerate(idle)
                         if not (any_healthy and t.degraded)]
                if fresh:
                    n, key, i = min(fresh)
                    return idle[i], f"exploring: {key} has {n} of {self.min_samples} samples"
        if self.explore_every and (self._decisions + 1) % self.explore_every == 0:
            if any_healthy is None:
                any_healthy = False in [t.degraded for t in targets]
            _, _, key, i = min((max(t.latency_samples, 0), max(t.in_flight, 0), t.key, i)
                               for i, t in enumerate(targets) if not (any_healthy and t.degraded))
            return targets[i], f"periodic exploration (every {self.explore_every}th): {key} has the fewest samples"
        top = max(values)
        if top <= 0.0:  # no healthy target measured yet (their first requests are out), or every one is degraded
            if any_healthy is None:
                any_healthy = False in [t.degraded for t in targets]
            if any_healthy or top <= -DEGRADED_PENALTY:
                *_, i = min((max(t.in_flight, 0), t.key, i)
                            for i, t in enumerate(targets) if not (any_healthy and t.degraded))
                return targets[i], "no latency measured yet: fewest in flight"
        if values.count(top) > 1:
            key = next_in_turn([targets[i].key for i, v in enumerate(values) if v == top], self._last)
            chosen = targets[list(scores).index(key)]
            return chosen, f"fastest: ~{_ms(self.cost(chosen))} expected, tied, taking turns"
        i = values.index(top)
        values[i] = -float("inf")
        runner = targets[values.index(max(values))]
        c, c2 = self.cost(targets[i]), self.cost(runner)
        if c2 is None:
            return targets[i], f"fastest: ~{_ms(c)} expected (the only one measured)"
        return targets[i], f"fastest: ~{_ms(c)} expected vs ~{_ms(c2)} on {runner.key}"

    def on_start(self, target: Target, ctx: RouteContext) -> None:
        self._decisions += 1
        self._last = target.key

    def params(self) -> dict[str, Any]:
        return {
            "expected_tokens": self.expected_tokens,
            "min_samples": self.min_samples,
            "explore_every": self.explore_every,
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> LatencyBased:
        return cls(**check_params(cls.name, params, ("expected_tokens", "min_samples", "explore_every")))


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"
