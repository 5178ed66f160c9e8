"""A clock the test sets by hand, for the parts that take `clock=` (quota, keys)."""

from __future__ import annotations

T0 = 1_800_000_000.0  # a whole number of minutes, so bucket edges are easy to reason about


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class TickingClock(Clock):
    """A clock that moves on a second each time it is read, so each thing it times has a time of its own."""

    def __init__(self, t: float = 100.0) -> None:
        super().__init__(t)

    def __call__(self) -> float:
        self.t += 1.0
        return self.t
