"""API keys (app/core/keys.py) on a real Store: only hashes kept, scopes, quotas, and changes seen across processes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from app.core.config import Config
from app.core.errors import InvalidValue, ModelNotFound
from app.core.keys import CONFIG_KEY_NAME, PREFIX, TOUCH_INTERVAL_S, KeyRing, KeySpec, is_inference_path
from app.core.routing.quota import Limits, QuotaManager, key_scope
from app.core.storage.store import Store
from tests.support.clock import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def quota(store: Store) -> QuotaManager:
    return QuotaManager(store)


@pytest.fixture
def ring(store: Store, quota: QuotaManager, clock: Clock) -> KeyRing:
    return KeyRing(store, quota, Config(), clock=clock)


def test_a_key_is_stored_only_as_its_hash(ring: KeyRing, store: Store) -> None:
    key, secret = ring.add(KeySpec.parse(name="laptop"))
    assert secret.startswith(PREFIX) and len(secret) > 40
    assert (key.name, key.scope, key.last_used) == ("laptop", "inference", None)
    rows = store.query("SELECT * FROM api_keys")
    assert rows == [("laptop", hashlib.sha256(secret.encode()).hexdigest(), "inference", key.created, None)]
    assert secret not in repr(rows) and secret not in repr(ring.all())


def test_identify_finds_the_key_and_nothing_else(ring: KeyRing) -> None:
    _, inference = ring.add(KeySpec.parse(name="ci"))
    _, admin = ring.add(KeySpec.parse(name="ops", scope="admin"))
    assert ring.identify(inference.encode()).name == "ci"  # type: ignore[union-attr]
    assert ring.identify(admin.encode()).scope == "admin"  # type: ignore[union-attr]
    for token in (b"", b"sb-", b"sk-anything", inference[:-1].encode(), inference.encode() + b"x",
                  hashlib.sha256(inference.encode()).hexdigest().encode()):
        assert ring.identify(token) is None


def test_the_configured_api_key_is_an_admin_key(store: Store, quota: QuotaManager) -> None:
    config = Config()
    ring = KeyRing(store, quota, config)
    assert not ring.exists() and ring.identify(b"configured-secret") is None
    config.api_key = "configured-secret"  # as the window's settings change it: seen at the next call
    key = ring.identify(b"configured-secret")
    assert key is not None and (key.name, key.scope, key.created) == (CONFIG_KEY_NAME, "admin", None)
    assert ring.exists() and ring.exists(scope="admin") and not ring.exists(scope="inference")
    assert ring.identify(b"configured-secreT") is None and ring.all() == []


def test_scopes_decide_the_paths() -> None:
    for path in ("/v1/chat/completions", "/v1/models", "/v1", "/health", "/v1/feedback"):
        assert is_inference_path(path)
    for path in ("/api/models", "/metrics", "/v10/x", "/v1x", "/", "/docs", "/api/keys"):
        assert not is_inference_path(path)


def test_names_are_checked(ring: KeyRing) -> None:
    for bad in ("", "has space", "-dash-first", "x" * 65, CONFIG_KEY_NAME, "é"):
        with pytest.raises(InvalidValue) as info:
            KeySpec.parse(name=bad)
        assert info.value.param == "name"
    with pytest.raises(InvalidValue):
        KeySpec.parse(name="ok", scope="root")
    for limit in (0, 2**63):  # 2**63 does not fit SQLite's INTEGER
        with pytest.raises(InvalidValue):
            KeySpec.parse(name="ok", tokens_per_hour=limit)
    assert KeySpec.parse(name="ok", requests_per_hour=2**63 - 1).limits.requests_per_hour == 2**63 - 1
    ring.add(KeySpec.parse(name="twice"))
    with pytest.raises(InvalidValue, match="exists already") as info:
        ring.add(KeySpec.parse(name="twice", scope="admin"))
    assert info.value.code == "key_exists"
    assert [k.scope for k in ring.all()] == ["inference"]


def test_revoke(ring: KeyRing) -> None:
    _, secret = ring.add(KeySpec.parse(name="gone", tokens_per_hour=100))
    ring.revoke("gone")
    assert ring.identify(secret.encode()) is None and ring.all() == [] and not ring.exists()
    with pytest.raises(ModelNotFound) as info:
        ring.revoke("gone")
    assert info.value.code == "key_not_found"


def test_quotas_are_the_key_scope_of_the_quota_manager(ring: KeyRing, quota: QuotaManager) -> None:
    key, secret = ring.add(KeySpec.parse(name="metered", tokens_per_hour=50, requests_per_hour=2))
    assert key.limits == Limits(50, 2) == quota.limits(key_scope("metered"))
    assert ring.all()[0].limits == Limits(50, 2)
    quota.record("some-model", "metered", 50)
    assert quota.exhausted("some-model", "metered")
    assert not quota.exhausted("some-model", None)
    ring.revoke("metered")
    assert quota.limits(key_scope("metered")).empty


def test_a_change_by_another_process_counts_at_once(tmp_path: Path, clock: Clock) -> None:
    server_store, cli_store = Store(tmp_path / "sb.db"), Store(tmp_path / "sb.db")
    try:
        server = KeyRing(server_store, server_quota := QuotaManager(server_store), Config(), clock=clock)
        cli = KeyRing(cli_store, QuotaManager(cli_store), Config(), clock=clock)
        assert not server.exists()
        _, secret = cli.add(KeySpec.parse(name="late", scope="admin", requests_per_hour=5))
        assert server.exists() and server.exists(scope="admin") and not server.exists(scope="inference")
        # The quota set by the other process applies from the key's first request here.
        assert server.identify(secret.encode()).name == "late"  # type: ignore[union-attr]
        assert server_quota.limits(key_scope("late")) == Limits(None, 5)
        cli.revoke("late")
        assert server.identify(secret.encode()) is None
    finally:
        server_store.close()
        cli_store.close()


def test_last_use_is_written_at_most_once_a_minute(ring: KeyRing, store: Store, clock: Clock) -> None:
    key, secret = ring.add(KeySpec.parse(name="busy"))
    first = clock.t
    ring.identify(secret.encode())
    store.flush()
    clock.t += TOUCH_INTERVAL_S / 2
    ring.identify(secret.encode())
    assert ring.all()[0].last_used == first
    clock.t += TOUCH_INTERVAL_S
    ring.identify(secret.encode())
    assert ring.all()[0].last_used == clock.t
