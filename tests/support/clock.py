"""A clock the test sets by hand, for the parts that take `clock=` (quota, keys)."""

from __future__ import annotations

T0 = 1_800_000_000.0  # a whole number of minutes, so bucket edges are easy to reason about


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
