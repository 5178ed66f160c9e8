"""Every table Switchboard keeps, as ordered schema steps applied by `PRAGMA user_version`.

A database at version N has had the first N steps applied; opening it applies the rest, all in one transaction
with the new version, so an upgrade happens wholly or not at all. Steps are only ever appended, never edited.
Step 1 is the schema as it stood before versioning, written to be idempotent: databases made before then (tables
present, version 0, some without `models.options`) come up to it without losing a row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

Step = Callable[[sqlite3.Connection], None]

_BASELINE = (
    # The registry's user edits and usage (catalog/registry.py) and small settings (runtime, routing).
    """CREATE TABLE IF NOT EXISTS models (
        id TEXT PRIMARY KEY,
        discovered TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1,
        aliases TEXT NOT NULL DEFAULT '[]',
        capabilities TEXT,
        use_count INTEGER NOT NULL DEFAULT 0,
        last_used REAL,
        missing INTEGER NOT NULL DEFAULT 0,
        options TEXT NOT NULL DEFAULT '{}'
    )""",
    """CREATE TABLE IF NOT EXISTS settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    # routing/quota.py
    """CREATE TABLE IF NOT EXISTS quota_limits (
        scope TEXT PRIMARY KEY,
        tokens_per_hour INTEGER,
        requests_per_hour INTEGER
    )""",
    """CREATE TABLE IF NOT EXISTS quota_usage (
        scope TEXT NOT NULL,
        start REAL NOT NULL,
        requests INTEGER NOT NULL,
        tokens INTEGER NOT NULL,
        PRIMARY KEY (scope, start)
    )""",
    # observe/decisions.py
    """CREATE TABLE IF NOT EXISTS decisions (
        seq INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        request_id TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        model_id TEXT NOT NULL,
        strategy TEXT NOT NULL,
        reason TEXT NOT NULL,
        total_score REAL,
        candidates TEXT NOT NULL,
        retried INTEGER NOT NULL,
        status INTEGER,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        cached_tokens INTEGER,
        ttft_ms REAL,
        duration_ms REAL,
        error TEXT,
        completed REAL
    )""",
    # observe/experiments.py
    """CREATE TABLE IF NOT EXISTS experiments (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        arms TEXT NOT NULL,
        metric TEXT NOT NULL,
        created REAL NOT NULL,
        active INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS experiment_samples (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        experiment_id TEXT NOT NULL,
        arm TEXT NOT NULL,
        request_id TEXT NOT NULL,
        time REAL NOT NULL,
        ok INTEGER NOT NULL,
        ttft_s REAL,
        tokens_per_s REAL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        feedback REAL
    )""",
    "CREATE INDEX IF NOT EXISTS experiment_samples_by_experiment ON experiment_samples (experiment_id, seq)",
    "CREATE INDEX IF NOT EXISTS experiment_samples_by_request ON experiment_samples (request_id)",
)


def _baseline(db: sqlite3.Connection) -> None:
    for statement in _BASELINE:
        db.execute(statement)
    # The first released version's `models` had no options column.
    columns = {row[1] for row in db.execute("PRAGMA table_info(models)")}
    if "options" not in columns:
        db.execute("ALTER TABLE models ADD COLUMN options TEXT NOT NULL DEFAULT '{}'")


def _api_keys(db: sqlite3.Connection) -> None:
    # core/keys.py: named API keys, only the SHA-256 of each secret; their quotas live in quota_limits.
    db.execute("""CREATE TABLE api_keys (
        name TEXT PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        scope TEXT NOT NULL,
        created REAL NOT NULL,
        last_used REAL
    )""")


def _surfaces(db: sqlite3.Connection) -> None:
    # observe/decisions.py: the API surface each request came through; core/responses.py: stored Responses
    # (the response object as sent, and the conversation it ends, for `previous_response_id`).
    db.execute("ALTER TABLE decisions ADD COLUMN surface TEXT NOT NULL DEFAULT 'openai'")
    db.execute("""CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        created REAL NOT NULL,
        response TEXT NOT NULL,
        conversation TEXT NOT NULL
    )""")
    db.execute("CREATE INDEX responses_by_created ON responses (created)")


def _conversations(db: sqlite3.Connection) -> None:
    # core/conversations.py: the window's chats (model and sampling settings each) and their messages, in order;
    # an answer's facts (model, reason, TTFT, tokens/s) as JSON.
    db.execute("""CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        model TEXT NOT NULL,
        settings TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL
    )""")
    db.execute("""CREATE TABLE conversation_messages (
        seq INTEGER PRIMARY KEY,
        conversation_id TEXT NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        facts TEXT,
        created REAL NOT NULL
    )""")
    db.execute("CREATE INDEX conversation_messages_by_conversation ON conversation_messages (conversation_id, seq)")


STEPS: tuple[Step, ...] = (_baseline, _api_keys, _surfaces, _conversations)


def version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection) -> int:
    """Apply the steps `db` has not had (it must be in autocommit mode); returns the version it ends at.

    A database from a newer Switchboard (a higher version) is left as it is: steps only add, so this
    version's tables and columns are all there."""
    # IMMEDIATE takes the write lock before reading the version: two processes opening one database at once
    # cannot both apply a step.
    db.execute("BEGIN IMMEDIATE")
    try:
        current = version(db)
        for step in STEPS[current:]:
            step(db)
        if current < len(STEPS):
            # PRAGMA takes no parameters; the value is this module's own integer.
            db.execute(f"PRAGMA user_version = {len(STEPS)}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return max(current, len(STEPS))
