"""The queue bookkeeping behind max_queue and max_queue_total."""

from __future__ import annotations

from app.core.routing.admission import Queues


def test_requests_beyond_the_slots_are_waiting() -> None:
    queues = Queues()
    places = [queues.hold("a", slots=2) for _ in range(5)]
    queues.hold("b", slots=1)
    assert queues.waiting("a", 2) == 3 and queues.waiting("b", 1) == 0
    assert queues.waiting_total() == 3
    places[0].release()
    assert queues.waiting("a", 2) == 2 and queues.held("a") == 4


def test_a_place_is_released_once_however_often_it_is_asked() -> None:
    queues = Queues()
    first, second = queues.hold("a", slots=1), queues.hold("a", slots=1)
    for _ in range(3):
        first.release()
    assert queues.held("a") == 1 and queues.waiting_total() == 0
    second.release()
    assert queues.held("a") == 0 and queues.waiting("a", 1) == 0
