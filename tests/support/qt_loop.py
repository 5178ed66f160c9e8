"""Helpers for tests that drive the desktop app's qasync loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from app.core.engine import Engine
from app.ui.app import Desktop


def run(d: Desktop, coro: object, timeout: float = 120) -> object:
    """Run a coroutine on the app's loop (Qt keeps processing events meanwhile)."""
    return d.run_until_complete(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


async def until(predicate: Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def engine_of(d: Desktop) -> Engine:
    """The Engine behind the window's Services: the tests check on the core itself what the window did."""
    return d.services._engine
