"""Integration tests run real worker processes, servers, sockets or Qt: every one is marked slow."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.config import Config
from app.core.engine import Engine

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


@pytest.fixture
def engine(sb_home: Path) -> Iterator[Engine]:
    """An engine in an empty, isolated home: the default model only (the window's tests drive it in-process)."""
    engine = Engine(Config(discovery=False))
    yield engine
    asyncio.new_event_loop().run_until_complete(engine.close())
