"""Which loaded models to unload: pure functions of the pool's state, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resident:
    model_id: str
    bytes: int
    last_used: float
    busy: bool = False
    loading: bool = False
    pinned: bool = False

    @property
    def evictable(self) -> bool:
        return not (self.busy or self.loading or self.pinned)


def choose_evictions(resident: Sequence[Resident], need: int, budget: int) -> list[str] | None:
    """Least recently used idle models to stop so that `need` more bytes fit; None if impossible."""
    used = sum(r.bytes for r in resident)
    if used + need <= budget:
        return []
    victims: list[str] = []
    for r in sorted((r for r in resident if r.evictable), key=lambda r: r.last_used):
        victims.append(r.model_id)
        used -= r.bytes
        if used + need <= budget:
            return victims
    return None


def expired(resident: Sequence[Resident], now: float, ttl: float) -> list[str]:
    """Idle, unpinned models unused for longer than `ttl` seconds."""
    return [r.model_id for r in resident if r.evictable and now - r.last_used > ttl]
