"""round_robin: each target in turn, fair also when the set of targets changes between calls.

It remembers the last key used and takes the next key in sorted order, so adding or removing a target neither
restarts the rotation nor skips anyone. Degraded targets sit out while a healthy one exists.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from app.core.routing.strategies.base import RouteContext, Selection, Strategy, Target
from app.core.routing.strategies.common import penalise
from app.core.routing.strategies.params import NoParams


class RoundRobin(Strategy):
    name = "round_robin"

    def __init__(self, config: NoParams | None = None) -> None:
        super().__init__(config)
        self._last: str | None = None  # advanced by on_start, so select stays free of side effects

    def select(self, targets: Sequence[Target], ctx: RouteContext) -> Selection:
        keys = sorted([t.key for t in targets if not t.degraded]) or sorted([t.key for t in targets])
        n = len(keys)
        i = bisect_right(keys, self._last) % n if self._last is not None else 0
        # Score = place in the rotation: the next in turn 1.0, the one after (n-1)/n, ...; sitting out 0.
        scores = dict.fromkeys([t.key for t in targets], 0.0)
        scores.update(zip(keys[i:] + keys[:i], [(n - j) / n for j in range(n)]))
        chosen = keys[i]
        reason = "round robin: only target" if n == 1 else f"round robin: next in turn ({i + 1} of {n})"
        if n < len(targets):
            reason += f"; {len(targets) - n} degraded sitting out"
        return Selection(chosen, reason, penalise(scores, targets))

    def on_start(self, target: Target, ctx: RouteContext) -> None:
        self._last = target.key
