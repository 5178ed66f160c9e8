"""SQLite persistence for what must survive restarts: user edits, usage and settings (tables: migrations.py)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from app.core.storage import migrations

# Deferred writes reach the database within this many seconds (or at the next read, or at close).
FLUSH_INTERVAL_S = 0.2


class Store:
    """A small SQLite store. User edits are written through; per-request bookkeeping (usage, decisions, quota
    counts) is deferred and written in batches by a background thread, off the request path; each batch is one
    transaction, so a crash loses at most the writes not yet flushed and never leaves half a batch.
    WAL without per-commit fsync keeps each write well under a millisecond: a killed process loses no committed
    write, and power loss at worst the last commits, never the database's consistency."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        # The server may touch the store from the event loop and from a thread helper; serialise access.
        self._lock = threading.Lock()
        self._pending: list[tuple[str, Sequence[Any]]] = []
        self._pending_lock = threading.Lock()
        self._closed = threading.Event()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        migrations.migrate(self._db)
        self._flusher = threading.Thread(target=self._flush_forever, name="store-flush", daemon=True)
        self._flusher.start()

    def defer(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Queue a write for the background flush; statements keep their order."""
        with self._pending_lock:
            self._pending.append((sql, params))

    def flush(self) -> None:
        if not self._pending:  # the usual case on a read
            return
        # The batch is taken under the connection's lock: two threads flushing at once commit in queue order.
        with self._lock:
            with self._pending_lock:
                pending, self._pending = self._pending, []
            if not pending:
                return
            self._db.execute("BEGIN")
            try:
                for sql, params in pending:
                    self._db.execute(sql, params)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _flush_forever(self) -> None:
        while not self._closed.wait(FLUSH_INTERVAL_S):
            try:
                self.flush()
            except sqlite3.Error:
                # A failed batch is dropped (it is bookkeeping); the store stays usable for the next one.
                pass

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement for another core module's own tables now; returns the rows changed."""
        self.flush()
        with self._lock:
            return self._db.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.flush()
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(sql, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.flush()  # read your own deferred writes
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def peek(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read that does not flush the deferred writes first: for the request path (API keys), reading rows
        that are written through, so the read is current and never pays for a batch commit."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        self._closed.set()
        self.flush()
        with self._lock:
            self._db.close()

    def models(self) -> Iterator[dict[str, Any]]:
        self.flush()
        with self._lock:
            rows = self._db.execute(
                "SELECT id, discovered, enabled, aliases, capabilities, use_count, last_used, missing, options "
                "FROM models"
            ).fetchall()
        for row in rows:
            yield {
                "id": row[0],
                "discovered": json.loads(row[1]),
                "enabled": bool(row[2]),
                "aliases": json.loads(row[3]),
                "capabilities": None if row[4] is None else json.loads(row[4]),
                "use_count": row[5],
                "last_used": row[6],
                "missing": bool(row[7]),
                "options": json.loads(row[8]),
            }

    def upsert_model(self, model_id: str, discovered: dict[str, Any], *, missing: bool) -> None:
        self.upsert_models([(model_id, discovered, missing)])

    def upsert_models(self, rows: Iterable[tuple[str, dict[str, Any], bool]]) -> None:
        """One transaction for a whole scan: hundreds of models must not mean hundreds of commits."""
        self.executemany(
            "INSERT INTO models (id, discovered, missing) VALUES (?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET discovered = excluded.discovered, missing = excluded.missing",
            [(model_id, json.dumps(discovered), int(missing)) for model_id, discovered, missing in rows],
        )

    def delete_model(self, model_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM models WHERE id = ?", (model_id,))

    def set_options(self, model_id: str, options: dict[str, Any]) -> None:
        self._update(model_id, "options", json.dumps(options))

    def set_missing(self, model_id: str, missing: bool) -> None:
        self._update(model_id, "missing", int(missing))

    def set_enabled(self, model_id: str, enabled: bool) -> None:
        self._update(model_id, "enabled", int(enabled))

    def set_aliases(self, model_id: str, aliases: list[str]) -> None:
        self._update(model_id, "aliases", json.dumps(aliases))

    def set_capabilities(self, model_id: str, capabilities: list[str] | None) -> None:
        self._update(model_id, "capabilities", None if capabilities is None else json.dumps(capabilities))

    def record_use(self, model_id: str, use_count: int, last_used: float) -> None:
        self.defer("UPDATE models SET use_count = ?, last_used = ? WHERE id = ?", (use_count, last_used, model_id))

    def _update(self, model_id: str, column: str, value: Any) -> None:
        # `column` is always one of this class's literals, never user input.
        with self._lock:
            self._db.execute(f"UPDATE models SET {column} = ? WHERE id = ?", (value, model_id))

    def get_setting(self, key: str, default: Any = None) -> Any:
        self.flush()
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_setting(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )
