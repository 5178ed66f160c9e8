"""The health checker against a real connection error: a closed loopback port."""

from __future__ import annotations

import socket
import time

import httpx

from app.core.routing.health import BreakerConfig, Health, HealthBook
from app.core.routing.health_checker import HealthChecker


async def test_a_real_connection_error_from_a_closed_loopback_port() -> None:
    with socket.socket() as s:  # bind then close: nothing listens on this port afterwards
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async with httpx.AsyncClient(timeout=2.0) as client:
        async def probe() -> tuple[bool, float, str | None]:
            response = await client.get(f"http://127.0.0.1:{port}/health")
            return response.status_code == 200, response.elapsed.total_seconds(), f"HTTP {response.status_code}"

        changes: list[tuple[str, Health, str | None]] = []
        book = HealthBook(BreakerConfig(failure_threshold=1))
        checker = HealthChecker(book, lambda: {"remote": probe}, on_change=lambda *c: changes.append(c))
        await checker.check_once()
    assert book.health("remote", time.monotonic()) is Health.UNHEALTHY
    assert changes and changes[0][:2] == ("remote", Health.UNHEALTHY)
    assert (changes[0][2] or "").startswith("ConnectError")
