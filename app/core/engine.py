"""The running core: configuration, store, registry, pool and router wired together.

The HTTP server and the desktop window both drive an Engine; neither reaches past it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from app.core import paths
from app.core.config import Config
from app.core.discovery.found import ScanResult
from app.core.discovery.scan import scan
from app.core.pool import ModelPool
from app.core.registry import Registry
from app.core.router import RouteRequest, Router, RoutingDecision
from app.core.store import Store

ALL_SOURCES = ("embedded", "hf", "ollama", "folders")


class Engine:
    def __init__(self, config: Config, store: Store | None = None) -> None:
        self.config = config
        self.store = store or Store(paths.database_path())
        self.registry = Registry(self.store)
        self.pool = ModelPool(self.registry, config, self.store)
        self.router = Router(self.registry)
        self.last_scan: ScanResult | None = None
        self._scan_lock = asyncio.Lock()

    async def start(self) -> None:
        await self.rescan()
        self.pool.start_reaper()

    async def close(self) -> None:
        await self.pool.close()
        self.store.close()

    async def rescan(self) -> ScanResult:
        """Scan in a thread (file I/O must not block the loop), then merge into the registry."""
        sources = ALL_SOURCES if self.config.discovery else ("embedded", "folders")
        async with self._scan_lock:
            result = await asyncio.to_thread(
                scan,
                extra_dirs=tuple(self.config.model_dirs),
                sources=sources,
                default_folders=self.config.discovery,
            )
            # Only a scan of every source may conclude that a model is gone.
            self.registry.sync(result.models, complete=self.config.discovery)
            self.last_scan = result
        return result

    def route(self, request: RouteRequest) -> RoutingDecision:
        return self.router.route(request)

    async def run(self, decision: RoutingDecision, op: str, params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Run one job on the decided model, loading it if needed; yields the worker's messages."""
        entry = self.registry.resolve(decision.model_id)
        handle = await self.pool.acquire(entry)
        self.registry.record_use(entry.id)
        # aclosing: when our caller stops early, the worker hears about it now, not at garbage collection.
        async with contextlib.aclosing(handle.run(op, params)) as messages:
            async for message in messages:
                yield message
