"""least_loaded: the target with the fewest requests in flight per slot, counting the prompt tokens its worker has
yet to evaluate and memory pressure as extra load.

Score = 1 / (1 + load), less the degraded penalty, so the highest score is the least loaded healthy target.
Ties (equal loads) take turns: the first tied key after the last one used, in sorted order, so sequential
requests on an idle pool spread over the replicas instead of always landing on the lowest key. Other strategies
reuse `scores`, `choose` and `pick` for their fallbacks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from app.core.routing.strategies.base import RouteContext, Selection, Strategy, Target
from app.core.routing.strategies.common import TIE_EPS, load, next_in_turn, penalise
from app.core.routing.strategies.params import LeastLoadedParams


class LeastLoaded(Strategy):
    name = "least_loaded"
    Params = LeastLoadedParams
    config: LeastLoadedParams

    def __init__(self, config: LeastLoadedParams | None = None) -> None:
        super().__init__(config)
        self._last: str | None = None  # the last key used, for turn-taking among ties

    def select(self, targets: Sequence[Target], ctx: RouteContext) -> Selection:
        scores = self.scores(targets)
        chosen, reason = self.choose(targets, scores)
        return Selection(chosen.key, reason, scores)

    def on_start(self, target: Target, ctx: RouteContext) -> None:
        self._last = target.key

    def scores(
        self, targets: Sequence[Target], extra: Mapping[str, float] | None = None, extra_scale: float = 1.0
    ) -> dict[str, float]:
        """1 / (1 + load) in (0, 1], less the degraded penalty: healthy (0, 1], degraded (-1, 0].

        `extra` (times `extra_scale`, >= 0) adds to a target's load by key: cache_aware's miss rule is this rule
        with cache fill as extra load."""
        w = self.config.memory_weight
        if extra is None:
            scores = {t.key: 1.0 / (1.0 + load(t, w)) for t in targets}
        else:
            scores = {t.key: 1.0 / (1.0 + load(t, w) + extra_scale * extra.get(t.key, 0.0)) for t in targets}
        return penalise(scores, targets)

    def pick(self, targets: Sequence[Target]) -> tuple[Target, str]:
        """The least loaded healthy target (any target when all are degraded) and a short reason."""
        return self.choose(targets, self.scores(targets))

    def choose(self, targets: Sequence[Target], scores: Mapping[str, float]) -> tuple[Target, str]:
        """`pick`, given `scores(targets)` (possibly with favour bonuses added): the highest score wins."""
        if len(targets) == 1:
            return targets[0], "least loaded: only target"
        values = list(scores.values())  # aligned with targets (their keys are unique)
        top = max(values)
        if values.count(top) > 1:
            tied = [i for i, v in enumerate(values) if v == top]
            key = next_in_turn([targets[i].key for i in tied], self._last)
            chosen = next(targets[i] for i in tied if targets[i].key == key)
            return chosen, f"least loaded: {len(tied)} tied at {self._describe(chosen)}, taking turns"
        i = values.index(top)
        values[i] = -float("inf")
        runner = targets[values.index(max(values))]
        note = " (degraded)" if runner.degraded and not targets[i].degraded else ""
        return targets[i], (
            f"least loaded: {self._describe(targets[i])} vs {self._describe(runner)} on {runner.key}{note}"
        )

    def _describe(self, t: Target) -> str:
        # Plain "N in flight" (of its slots) unless memory pressure actually adds to the load.
        n = max(t.in_flight, 0)
        busy = f"{n} in flight" if t.slots <= 1 else f"{n} in flight on {t.slots} slots"
        if t.pending_tokens > 0:
            busy += f", {t.pending_tokens} prompt tokens to evaluate"
        x = load(t, self.config.memory_weight)
        work = load(t, 0.0)
        if x - work <= TIE_EPS:
            return busy
        return f"load {x:.1f} ({busy} + memory {x - work:.1f})"
