"""Per-target latency figures (exponentially weighted), fed by completed requests, read by the router."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Latency:
    ttft_s: float | None = None
    tpot_s: float | None = None
    samples: int = 0


class TargetStats:
    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self._by_key: dict[str, Latency] = {}

    def get(self, key: str) -> Latency:
        return self._by_key.get(key) or Latency()

    def record(self, key: str, ttft_s: float | None, tpot_s: float | None) -> None:
        current = self._by_key.setdefault(key, Latency())
        current.ttft_s = self._blend(current.ttft_s, ttft_s)
        current.tpot_s = self._blend(current.tpot_s, tpot_s)
        if ttft_s is not None:
            current.samples += 1

    def _blend(self, old: float | None, new: float | None) -> float | None:
        if new is None:
            return old
        return new if old is None else old + self.alpha * (new - old)
