"""Integration tests run real worker processes, servers, sockets or Qt: every one is marked slow."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _collect_garbage_on_the_main_thread() -> Iterator[None]:
    """Free each test's unreachable objects here, on the Qt thread. Left to chance, Python's cyclic collector runs
    in whichever thread allocates next (a worker thread of asyncio.to_thread, say), and a Qt object destroyed
    there leaves its timers registered with the Qt thread: the next timer tick crashes the test process."""
    yield
    gc.collect()
