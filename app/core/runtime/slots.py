"""What a local worker reports about its slots: the router's view of what each worker really holds and does.

A worker sends one after every decode step that changed its slots (batch.py `report`); the handle keeps the last.
Strategies read it as facts, not predictions: `held` comes from the worker's own cells and RAM cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class SlotReport:
    busy: tuple[bool, ...] = ()  # per slot: decoding a request
    tokens: tuple[int, ...] = ()  # per slot: tokens its cells hold (a busy slot's request, or an idle slot's cache)
    # Per request id: the largest fraction of its prompt the slots or the RAM cache hold (1 while it runs or waits).
    held: Mapping[str, float] = field(default_factory=dict)
    waiting: int = 0  # requests in the worker waiting for a slot
    pending_tokens: int = 0  # prompt tokens still to evaluate, over the running and waiting requests

    @classmethod
    def of(cls, message: Mapping[str, Any]) -> SlotReport:
        held = message.get("held") or {}
        return cls(busy=tuple(bool(b) for b in message.get("busy", ())),
                   tokens=tuple(int(t) for t in message.get("tokens", ())),
                   held={str(k): min(1.0, max(0.0, float(v))) for k, v in held.items()},
                   waiting=int(message.get("waiting", 0)), pending_tokens=int(message.get("pending_tokens", 0)))

    @property
    def busy_slots(self) -> int:
        return sum(self.busy)
