"""The threads the pool gives each local worker: a pure function of the cores and the workers loaded."""

from __future__ import annotations

import pytest

from app.core.runtime.threads import thread_share


@pytest.mark.parametrize(("cores", "workers", "configured", "share"), [
    (8, 1, None, (8, 8)),  # alone: every core to generate and to read prompts, as llama-server
    (2, 1, None, (2, 2)),
    (8, 0, None, (8, 8)),
    (1, 1, None, (1, 1)),
    (8, 2, None, (4, 4)),  # several: they share the cores, never asking for more than there are
    (8, 3, None, (2, 2)),
    (2, 2, None, (1, 1)),
    (2, 5, None, (1, 1)),  # more workers than cores: one thread each, never zero
    (8, 4, 3, (3, 3)),  # the user's setting wins
    (8, 1, 2, (2, 2)),
])
def test_one_worker_takes_every_core_and_several_share_them(
        cores: int, workers: int, configured: int | None, share: tuple[int, int]) -> None:
    assert thread_share(cores, workers, configured) == share
    if configured is None:
        assert max(workers, 1) * share[0] <= max(cores, workers)
