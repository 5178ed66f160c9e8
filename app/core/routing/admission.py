"""How many requests each model holds (running or waiting for a slot), so queues stay bounded.

Pure bookkeeping: the engine holds a place before a job starts and the place is released once, however the job
ends. A model's requests beyond its slots wait in its worker's queue.
"""

from __future__ import annotations

from collections import Counter


class Queues:
    def __init__(self) -> None:
        self._held: Counter[str] = Counter()
        self._slots: dict[str, int] = {}

    def waiting(self, model_id: str, slots: int) -> int:
        return max(0, self._held[model_id] - slots)

    def waiting_total(self) -> int:
        return sum(max(0, held - self._slots.get(model_id, 1)) for model_id, held in self._held.items())

    def held(self, model_id: str) -> int:
        return self._held[model_id]

    def hold(self, model_id: str, slots: int) -> Place:
        self._held[model_id] += 1
        self._slots[model_id] = slots
        return Place(self, model_id)

    def _release(self, model_id: str) -> None:
        self._held[model_id] -= 1
        if self._held[model_id] <= 0:
            del self._held[model_id]
            self._slots.pop(model_id, None)


class Place:
    """One request's place in a model's queue; releasing it twice is harmless (every exit path may try)."""

    def __init__(self, queues: Queues, model_id: str) -> None:
        self._queues = queues
        self.model_id = model_id
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._queues._release(self.model_id)
