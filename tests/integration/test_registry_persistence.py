"""The registry's usage counts reach SQLite through the store's background flush, with no read forcing it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from app.core.catalog.registry import Registry
from app.core.storage.store import FLUSH_INTERVAL_S, Store
from tests.support.models import found


def test_usage_reaches_the_database_without_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "registry.sqlite3"
    registry = Registry(Store(db))
    registry.sync([found("smol", "q4_1", "/m/smol.gguf")])
    registry.record_use("smol:q4_1", when=5.0)
    time.sleep(FLUSH_INTERVAL_S * 3)  # the background flush, not a read, writes it
    assert sqlite3.connect(db).execute("SELECT use_count FROM models").fetchone() == (1,)
