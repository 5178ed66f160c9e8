"""Named API keys: each a random secret shown once and stored only as its SHA-256, with a scope and optional
hourly quotas.

A key's scope says what it may call: `inference` the OpenAI-compatible API (/v1) and /health, `admin` everything
(also the management API /api and /metrics). Its quotas are the quota manager's scope "key:<name>", kept in
quota_limits like every other quota. A request carries its key's name, never the secret or a hash of it, so log
lines and decision records can only ever name a key.

Every lookup reads the store (one indexed row), so a key added or revoked by another process (`switchboard keys`
while the server runs) counts from the next request on.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.core.config import Config
from app.core.errors import InvalidValue, ModelNotFound
from app.core.routing.quota import MAX_LIMIT, Limits, QuotaManager, key_scope
from app.core.storage.store import Store

Scope = Literal["inference", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
# Secret scanners and people recognise a Switchboard key by it; tokens without it are never looked up.
PREFIX = "sb-"
# The config's api_key (--api-key, SWITCHBOARD_API_KEY) acts as an admin key known by this name.
CONFIG_KEY_NAME = "api_key"
# A busy key's last use is written at most this often, not once per request.
TOUCH_INTERVAL_S = 60.0

# A key's row with its quota: quota_limits' scope is key_scope(name).
_SELECT = (
    "SELECT k.name, k.scope, k.created, k.last_used, q.tokens_per_hour, q.requests_per_hour FROM api_keys k "
    "LEFT JOIN quota_limits q ON q.scope = 'key:' || k.name"
)


class KeySpec(BaseModel):
    """A key to create, as the command line, the management API and the window ask for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                      description="What logs, decisions and quotas call the key: letters, digits, . _ -")
    scope: Scope = Field("inference", description="inference: /v1 and /health; admin: also /api and /metrics")
    tokens_per_hour: int | None = Field(None, ge=1, le=MAX_LIMIT,
                                        description="Tokens the key may use per hour; none: no limit")
    requests_per_hour: int | None = Field(None, ge=1, le=MAX_LIMIT,
                                          description="Requests the key may make per hour; none: no limit")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name == CONFIG_KEY_NAME:
            raise ValueError(f"'{CONFIG_KEY_NAME}' is the name of the configured api_key")
        return name

    @classmethod
    def parse(cls, **values: Any) -> Self:
        """A validated spec from user input; InvalidValue naming the first field that is wrong."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or None
            raise InvalidValue(f"{field}: {first['msg']} (got {first.get('input')!r})", param=field) from None

    @property
    def limits(self) -> Limits:
        return Limits(self.tokens_per_hour, self.requests_per_hour)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as the server knows it: never its secret. `created` is None for the configured api_key."""

    name: str
    scope: Scope
    created: float | None
    last_used: float | None
    limits: Limits

    def allows(self, path: str) -> bool:
        return self.scope == "admin" or is_inference_path(path)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scope": self.scope, "created": self.created, "last_used": self.last_used,
                **self.limits.as_dict()}


# Ollama's API paths that read models or run them (what its clients call); its others (pull, delete, ...) manage.
OLLAMA_INFERENCE_PATHS = frozenset({"/api/version", "/api/tags", "/api/show", "/api/ps", "/api/chat",
                                    "/api/generate", "/api/embed", "/api/embeddings"})


def is_inference_path(path: str) -> bool:
    """What an `inference` key may call: the OpenAI, Responses and Anthropic APIs (/v1), Ollama's inference API,
    and liveness."""
    return path in ("/health", "/v1") or path.startswith("/v1/") or path in OLLAMA_INFERENCE_PATHS


def digest(secret: str | bytes) -> str:
    """What the store keeps of a secret. A random 256-bit secret needs no salt or slow hash: it cannot be guessed."""
    return hashlib.sha256(secret.encode() if isinstance(secret, str) else secret).hexdigest()


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


class KeyRing:
    """The keys and their quotas: add, list, revoke, and identify the key a request sends. The config's api_key
    (read at each call: the window may change it) is one more, admin, key; it is not stored here."""

    def __init__(self, store: Store, quota: QuotaManager, config: Config, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._quota = quota
        self._config = config
        self._clock = clock

    def add(self, spec: KeySpec) -> tuple[ApiKey, str]:
        """Create the key; returns it with its secret, which is not kept and cannot be shown again."""
        secret = new_secret()
        created = self._clock()
        # The insert is the check: two processes adding one name at once cannot both succeed.
        inserted = self._store.execute(
            "INSERT INTO api_keys (name, digest, scope, created) VALUES (?, ?, ?, ?) ON CONFLICT(name) DO NOTHING",
            (spec.name, digest(secret), spec.scope, created))
        if not inserted:
            raise InvalidValue(f"A key named '{spec.name}' exists already; revoke it first", param="name",
                               code="key_exists")
        # Also clears limits a revoked key of the same name left behind in another process's quota manager.
        self._quota.set_limits(key_scope(spec.name), spec.limits)
        return ApiKey(spec.name, spec.scope, created, None, spec.limits), secret

    def revoke(self, name: str) -> None:
        if not self._store.execute("DELETE FROM api_keys WHERE name = ?", (name,)):
            raise ModelNotFound(f"No API key is named '{name}'", param="name", code="key_not_found")
        self._quota.set_limits(key_scope(name), Limits())

    def all(self) -> list[ApiKey]:
        return [self._key(row) for row in self._store.query(_SELECT + " ORDER BY k.name")]

    def report(self) -> list[dict[str, Any]]:
        """Every key as shown (never a secret), with what it used of the hour's quota."""
        report = []
        for key in self.all():
            used = self._quota.usage(key_scope(key.name))
            report.append({**key.as_dict(), "usage": {"requests": used["requests"], "tokens": used["tokens"]}})
        return report

    def exists(self, *, scope: Scope | None = None) -> bool:
        """Whether any key (of `scope`, when given) exists, the configured one included."""
        if self._config.api_key and scope != "inference":
            return True
        if scope is None:
            return bool(self._store.peek("SELECT 1 FROM api_keys LIMIT 1"))
        return bool(self._store.peek("SELECT 1 FROM api_keys WHERE scope = ? LIMIT 1", (scope,)))

    def identify(self, token: bytes) -> ApiKey | None:
        """The key whose secret `token` is, the configured api_key included, or None; notes a stored key's use.

        A stored key is looked up by the token's SHA-256: an attacker who times that learns about a hash of their
        own guess, not about any stored secret. The configured key is compared in constant time."""
        configured = self._config.api_key
        if configured and hmac.compare_digest(token, configured.encode()):
            return ApiKey(CONFIG_KEY_NAME, "admin", None, None, self._quota.limits(key_scope(CONFIG_KEY_NAME)))
        if not token.startswith(PREFIX.encode()):
            return None
        rows = self._store.peek(_SELECT + " WHERE k.digest = ?", (digest(token),))
        if not rows:
            return None
        key = self._key(rows[0])
        # quota_limits holds a key's quota; another process (the CLI) may have set it since this one loaded it.
        if self._quota.limits(key_scope(key.name)) != key.limits:
            self._quota.set_limits(key_scope(key.name), key.limits)
        now = self._clock()
        if key.last_used is None or now - key.last_used >= TOUCH_INTERVAL_S:
            self._store.defer("UPDATE api_keys SET last_used = ? WHERE name = ?", (now, key.name))
        return key

    @staticmethod
    def _key(row: tuple[Any, ...]) -> ApiKey:
        name, scope, created, last_used, tokens, requests = row
        return ApiKey(name, scope, created, last_used, Limits(tokens, requests))
