"""Schema migrations: a fresh database gets every step; one made before versioning keeps its rows."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.storage import migrations
from app.core.storage.store import Store

TABLES = {"models", "settings", "quota_limits", "quota_usage", "decisions", "experiments", "experiment_samples",
          "api_keys", "responses", "conversations", "conversation_messages"}

# The schema as Switchboard wrote it before PRAGMA user_version (frozen here: it must never follow the code).
UNVERSIONED = """
CREATE TABLE models (id TEXT PRIMARY KEY, discovered TEXT NOT NULL, enabled INTEGER NOT NULL DEFAULT 1,
    aliases TEXT NOT NULL DEFAULT '[]', capabilities TEXT, use_count INTEGER NOT NULL DEFAULT 0, last_used REAL,
    missing INTEGER NOT NULL DEFAULT 0, options TEXT NOT NULL DEFAULT '{}');
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE quota_limits (scope TEXT PRIMARY KEY, tokens_per_hour INTEGER, requests_per_hour INTEGER);
CREATE TABLE quota_usage (scope TEXT NOT NULL, start REAL NOT NULL, requests INTEGER NOT NULL,
    tokens INTEGER NOT NULL, PRIMARY KEY (scope, start));
CREATE TABLE decisions (seq INTEGER PRIMARY KEY, time REAL NOT NULL, request_id TEXT NOT NULL,
    endpoint TEXT NOT NULL, model_id TEXT NOT NULL, strategy TEXT NOT NULL, reason TEXT NOT NULL, total_score REAL,
    candidates TEXT NOT NULL, retried INTEGER NOT NULL, status INTEGER, prompt_tokens INTEGER,
    completion_tokens INTEGER, cached_tokens INTEGER, ttft_ms REAL, duration_ms REAL, error TEXT, completed REAL);
CREATE TABLE experiments (id TEXT PRIMARY KEY, name TEXT NOT NULL, arms TEXT NOT NULL, metric TEXT NOT NULL,
    created REAL NOT NULL, active INTEGER NOT NULL);
CREATE TABLE experiment_samples (seq INTEGER PRIMARY KEY AUTOINCREMENT, experiment_id TEXT NOT NULL,
    arm TEXT NOT NULL, request_id TEXT NOT NULL, time REAL NOT NULL, ok INTEGER NOT NULL, ttft_s REAL,
    tokens_per_s REAL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, feedback REAL);
CREATE INDEX experiment_samples_by_experiment ON experiment_samples (experiment_id, seq);
CREATE INDEX experiment_samples_by_request ON experiment_samples (request_id);
"""

ROWS = """
INSERT INTO models (id, discovered, aliases, options) VALUES ('smol:q4_1', '{"path": "/m/smol.gguf"}', '["smol"]',
    '{"weight": 2.5}');
INSERT INTO settings (key, value) VALUES ('router', '{"strategy": "round_robin"}');
INSERT INTO quota_limits VALUES ('model:smol:q4_1', 1000, NULL);
INSERT INTO quota_usage VALUES ('model:smol:q4_1', 3600.0, 2, 40);
INSERT INTO decisions (seq, time, request_id, endpoint, model_id, strategy, reason, candidates, retried)
    VALUES (1, 10.0, 'req-1', '/v1/chat/completions', 'smol:q4_1', 'round_robin', 'its turn', '[]', 0);
INSERT INTO experiments VALUES ('exp-1', 'speed', '[]', 'ttft_ms', 5.0, 1);
INSERT INTO experiment_samples (experiment_id, arm, request_id, time, ok, prompt_tokens, completion_tokens)
    VALUES ('exp-1', 'a', 'req-1', 11.0, 1, 3, 4);
"""


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    yield connection
    connection.close()


def tables(db: sqlite3.Connection) -> set[str]:
    rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    return {name for (name,) in rows}


def snapshot(db: sqlite3.Connection) -> dict[str, object]:
    """The whole schema and every row, to compare a database before and after."""
    schema = db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    rows = {name: db.execute(f"SELECT * FROM {name} ORDER BY 1").fetchall() for name in sorted(tables(db))}
    return {"version": migrations.version(db), "schema": schema, "rows": rows}


def test_a_fresh_database_runs_every_step(db: sqlite3.Connection) -> None:
    assert migrations.migrate(db) == len(migrations.STEPS)
    assert migrations.version(db) == len(migrations.STEPS)
    assert tables(db) == TABLES
    indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
               if not name.startswith("sqlite_")}
    assert indexes == {"experiment_samples_by_experiment", "experiment_samples_by_request", "responses_by_created",
                       "conversation_messages_by_conversation"}


def test_a_store_opens_at_the_latest_version(tmp_path: Path) -> None:
    store = Store(tmp_path / "sb.db")
    try:
        assert store.query("PRAGMA user_version") == [(len(migrations.STEPS),)]
    finally:
        store.close()


def test_an_unversioned_database_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(UNVERSIONED + ROWS)
    old.close()
    store = Store(path)
    try:
        assert store.query("PRAGMA user_version") == [(len(migrations.STEPS),)]
        (model,) = store.models()
        assert (model["id"], model["aliases"], model["options"]) == ("smol:q4_1", ["smol"], {"weight": 2.5})
        assert store.get_setting("router") == {"strategy": "round_robin"}
        assert store.query("SELECT * FROM quota_limits") == [("model:smol:q4_1", 1000, None)]
        assert store.query("SELECT * FROM quota_usage") == [("model:smol:q4_1", 3600.0, 2, 40)]
        assert store.query("SELECT request_id, reason FROM decisions") == [("req-1", "its turn")]
        assert store.query("SELECT id, name FROM experiments") == [("exp-1", "speed")]
        assert store.query("SELECT experiment_id, request_id FROM experiment_samples") == [("exp-1", "req-1")]
    finally:
        store.close()


def test_the_first_versions_models_table_gains_its_options_column(db: sqlite3.Connection) -> None:
    db.executescript("""
        CREATE TABLE models (id TEXT PRIMARY KEY, discovered TEXT NOT NULL, enabled INTEGER NOT NULL DEFAULT 1,
            aliases TEXT NOT NULL DEFAULT '[]', capabilities TEXT, use_count INTEGER NOT NULL DEFAULT 0,
            last_used REAL, missing INTEGER NOT NULL DEFAULT 0);
        INSERT INTO models (id, discovered) VALUES ('base:q4_0', '{}');
    """)
    migrations.migrate(db)
    assert db.execute("SELECT id, options FROM models").fetchall() == [("base:q4_0", "{}")]
    assert tables(db) == TABLES


def test_migrating_again_is_a_no_op(db: sqlite3.Connection) -> None:
    db.executescript(UNVERSIONED + ROWS)
    migrations.migrate(db)
    before = snapshot(db)
    assert migrations.migrate(db) == len(migrations.STEPS)
    assert snapshot(db) == before


def test_a_failing_step_leaves_the_database_as_it_was(db: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(connection: sqlite3.Connection) -> None:
        connection.execute("CREATE TABLE half_done (x INTEGER)")
        raise sqlite3.OperationalError("disk full")

    monkeypatch.setattr(migrations, "STEPS", (*migrations.STEPS, broken))
    with pytest.raises(sqlite3.OperationalError, match="disk full"):
        migrations.migrate(db)
    assert migrations.version(db) == 0
    assert tables(db) == set()
    assert not db.in_transaction


def test_a_database_from_a_newer_version_is_left_alone(db: sqlite3.Connection) -> None:
    newer = len(migrations.STEPS) + 3
    db.execute(f"PRAGMA user_version = {newer}")
    assert migrations.migrate(db) == newer
    assert migrations.version(db) == newer
    assert tables(db) == set()
