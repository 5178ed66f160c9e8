"""The health checker: probes every served model on an interval and feeds the results to the health book.

The one part of health that touches asyncio and a clock; what a result means is the book's (health.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from app.core.routing.health import ChangeListener, Health, HealthBook

log = logging.getLogger(__name__)

ProbeResult = tuple[bool, float, str | None]  # ok, latency in seconds, failure reason
Probe = Callable[[], Awaitable[ProbeResult]]


class HealthChecker:
    """Probes every model on an interval and feeds the results to a HealthBook.

    `probes()` is asked each round, so the set of probed models follows whatever the caller serves (e.g. the
    loaded workers). A probe returns (ok, latency_s, reason); one that raises or outlasts `timeout_s` counts as a
    failure with the exception's text. The latency counts as a TTFT sample, so a probe should be a tiny
    generation if `degraded_ttft_s` is set. Models whose breaker is open are probed only when `allow` says so.
    `on_change(model_id, health, explanation)` is called whenever a model's health differs from the last seen.
    """

    def __init__(self, book: HealthBook, probes: Callable[[], Mapping[str, Probe]], *, interval_s: float = 15.0,
                 on_change: ChangeListener, clock: Callable[[], float] = time.monotonic,
                 timeout_s: float = 10.0) -> None:
        self.book = book
        self._probes = probes
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._on_change = on_change
        self._clock = clock
        self._last: dict[str, Health] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="health-checker")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def check_once(self) -> dict[str, Health]:
        """Probe every model the breaker allows, concurrently; returns the health of every model asked about."""
        probes = dict(self._probes())
        now = self._clock()
        due = {model_id: probe for model_id, probe in probes.items() if self.book.allow(model_id, now)}
        results = await asyncio.gather(*(self._probe(probe) for probe in due.values()))
        now = self._clock()
        for model_id, (ok, latency, reason) in zip(due, results):
            self.book.record(model_id, ok, now, latency_s=latency if ok else None, reason=reason)
        for gone in self._last.keys() - probes.keys():
            del self._last[gone]
        # Every model is compared, probed or not: an open breaker or an aging window changes health too.
        current = {model_id: self.book.health(model_id, now) for model_id in probes}
        for model_id, health in current.items():
            if self._last.get(model_id, Health.UNKNOWN) is not health:
                self._last[model_id] = health
                self._notify(model_id, health, self.book.explain(model_id, now))
        return current

    async def _probe(self, probe: Probe) -> ProbeResult:
        try:
            ok, latency, reason = await asyncio.wait_for(probe(), self.timeout_s)
        except TimeoutError:
            return False, self.timeout_s, f"health probe timed out after {self.timeout_s:g} s"
        except Exception as exc:  # noqa: BLE001 - any probe error is a failed check, never a dead checker
            return False, 0.0, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return bool(ok), float(latency), None if ok else (reason or "health probe failed")

    def _notify(self, model_id: str, health: Health, reason: str | None) -> None:
        try:
            self._on_change(model_id, health, reason)
        except Exception:  # a listener's bug must not stop health checks
            log.exception("health change listener failed for %s", model_id)

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # e.g. probes() itself failed; try again next round
                log.exception("health check round failed")
            await asyncio.sleep(self.interval_s)
