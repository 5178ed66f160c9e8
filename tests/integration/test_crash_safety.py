"""Crash safety: a process killed with SIGKILL while it saves the config and flushes quota counts leaves both whole.

A child process saves config.json over and over with changing values and records quota usage through the real
QuotaManager and Store, flushing after each round and then printing what is now on disk. The test kills it at a
random moment, several times in a row on the same files, and after each kill the config loads, the database
passes SQLite's integrity check in WAL mode, and the counts read back are at least what the child last reported
flushed and at most what it had recorded.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from app.core import paths
from app.core.config import Config
from app.core.routing.quota import QuotaManager, key_scope, model_scope
from app.core.storage.store import Store

KILLS = 5
BATCH = 5  # quota records per round
TOKENS = 3  # per record
DIRS = 200  # model_dirs entries: a config file of several kB, so a kill can land in the middle of its write
MODEL, KEY = "crash-model", "crash-key"

CHILD = f"""
import itertools
from app.core import paths
from app.core.config import Config
from app.core.routing.quota import QuotaManager, key_scope, model_scope
from app.core.storage.store import Store

store = Store(paths.database_path())
quota = QuotaManager(store)
# A kill may have landed between a record's two writes: each scope counts from its own total.
scopes = (model_scope({MODEL!r}), key_scope({KEY!r}))
flushed = [quota.usage(scope)["requests"] for scope in scopes]
for i in itertools.count(1):
    Config(idle_ttl_s=float(i), model_dirs=[f"/models/{{i}}/{{j}}" for j in range({DIRS})]).save()
    for _ in range({BATCH}):
        quota.record({MODEL!r}, {KEY!r}, {TOKENS})
    store.flush()
    flushed = [count + {BATCH} for count in flushed]
    print(i, *flushed, flush=True)
"""


def _run_and_kill(delay: float) -> tuple[int, dict[str, int]]:
    """Start the child, kill it `delay` seconds after its first round: the last config value it reported saved,
    and each scope's request count it last reported flushed."""
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    lines: list[str] = []
    first_round = threading.Event()

    def read() -> None:  # drain the pipe, so the child never blocks on a full one instead of saving
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line)
            first_round.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert first_round.wait(60), "the child never finished a round"
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        reader.join()
    assert child.returncode == -signal.SIGKILL
    complete = [line for line in lines if line.endswith("\n")]
    value, *flushed = (int(word) for word in complete[-1].split())
    return value, dict(zip((model_scope(MODEL), key_scope(KEY)), flushed))


def test_sigkill_during_config_saves_and_quota_flushes_leaves_both_intact(sb_home: Path) -> None:
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    for kill in range(KILLS):
        delay = rng.uniform(0.0, 0.3)
        value, flushed = _run_and_kill(delay)
        where = f"kill {kill + 1} after {delay:.3f} s (seed {seed})"

        # The save after the last reported one may have finished before the kill; nothing else is possible.
        config = Config.load()
        assert config.idle_ttl_s in (value, value + 1), where
        assert config.model_dirs == [f"/models/{int(config.idle_ttl_s)}/{j}" for j in range(DIRS)], where

        store = Store(paths.database_path())
        try:
            assert store.query("PRAGMA integrity_check") == [("ok",)], where
            assert store.query("PRAGMA journal_mode") == [("wal",)], where
            quota = QuotaManager(store)
            for scope, count in flushed.items():
                usage = quota.usage(scope)
                # Flushed records are never lost; the round in progress may have reached the disk in part or whole.
                assert count <= usage["requests"] <= count + BATCH, (where, scope, usage)
                assert usage["tokens"] == TOKENS * usage["requests"], (where, scope, usage)
        finally:
            store.close()
