"""A worker's lifecycle: which states follow which, checked in one place and announced. No process is started."""

from __future__ import annotations

import itertools

import pytest

from app.core.runtime.local.handle import IllegalTransition, LoadSpec, WorkerHandle, WorkerState, check_transition

S = WorkerState
LEGAL = {
    (S.STARTING, S.READY), (S.STARTING, S.FAILED), (S.STARTING, S.STOPPING),
    (S.READY, S.STOPPING), (S.READY, S.FAILED),
    (S.STOPPING, S.STOPPED),
}


@pytest.mark.parametrize(("current", "new"), sorted(LEGAL))
def test_legal_transitions(current: WorkerState, new: WorkerState) -> None:
    check_transition(current, new)


@pytest.mark.parametrize(("current", "new"), sorted(set(itertools.product(S, S)) - LEGAL))
def test_every_other_transition_raises(current: WorkerState, new: WorkerState) -> None:
    with pytest.raises(IllegalTransition, match=f"from {current.value} to {new.value}"):
        check_transition(current, new)


def handle() -> tuple[WorkerHandle, list[WorkerState]]:
    worker = WorkerHandle("m", LoadSpec(model_path="/nowhere.gguf"), replica=1)
    seen: list[WorkerState] = []
    worker.on_state = lambda w: seen.append(w.state)
    return worker, seen


async def test_a_handle_is_born_starting_and_stopping_it_announces_each_step_once() -> None:
    worker, seen = handle()
    assert worker.state is S.STARTING and not worker.alive
    await worker.stop()
    assert worker.state is S.STOPPED and seen == [S.STOPPING, S.STOPPED]
    await worker.stop()  # stopping a stopped worker only makes sure its process is gone
    assert seen == [S.STOPPING, S.STOPPED]


async def test_a_handle_starts_once() -> None:
    worker, seen = handle()
    await worker.stop()
    with pytest.raises(IllegalTransition, match="starts once"):
        await worker.start(1.0)
    assert seen == [S.STOPPING, S.STOPPED] and worker.pid is None
