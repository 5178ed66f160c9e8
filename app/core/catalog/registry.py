"""The model registry: every known model with its metadata, user settings and usage.

Health is not here: app/core/routing/health.py owns it.
"""

from __future__ import annotations

import builtins
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from app.core.catalog import capabilities as caps
from app.core.catalog.discovery.found import FoundModel
from app.core.catalog.model import DISCOVERED, LoadFailure, ModelEntry, entry_from_found
from app.core.config import MAX_PARALLEL
from app.core.errors import InvalidRequest, ModelNotFound
from app.core.storage.store import Store

_ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
RESERVED_NAMES = frozenset({"auto"})


Listener = Callable[[str, ModelEntry], None]


class Registry:
    """Lookup by id or alias is a dict access. Every user edit is written through to the store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._entries: dict[str, ModelEntry] = {}
        self._aliases: dict[str, str] = {}
        self._listeners: list[Listener] = []
        self._default_id: str | None = store.get_setting("default_model")
        self._load()

    # -- reading ---------------------------------------------------------------------------
    def get(self, name: str) -> ModelEntry | None:
        entry = self._entries.get(name)
        if entry is None:
            target = self._aliases.get(name)
            entry = self._entries.get(target) if target else None
        return entry

    def resolve(self, name: str) -> ModelEntry:
        entry = self.get(name)
        if entry is None:
            raise ModelNotFound(f"The model '{name}' does not exist", param="model")
        return entry

    def list(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def versions(self, model_id: str) -> builtins.list[str]:
        """The same model in other quantizations or from other sources."""
        entry = self.resolve(model_id)
        return sorted(e.id for e in self._entries.values() if e.name == entry.name and e.id != entry.id)

    @property
    def default_id(self) -> str | None:
        if self._default_id in self._entries:
            return self._default_id
        # No explicit choice: the embedded model, else the first usable chat model.
        usable = [e for e in self._entries.values() if e.enabled and not e.missing]
        for pick in (lambda e: e.source == "embedded", lambda e: caps.CHAT in e.capabilities, lambda e: True):
            for entry in usable:
                if pick(entry):
                    return entry.id
        return None

    # -- discovery ---------------------------------------------------------------------------
    def sync(self, found: Iterable[FoundModel], *, complete: bool = True) -> None:
        """Merge a scan. With `complete`, models not seen are marked missing (never forgotten).

        A remembered load failure is forgotten once its files (or llama.cpp) changed; what the scan itself found
        llama.cpp cannot load is remembered as a load failure."""
        seen: dict[str, ModelEntry] = {}
        for item in found:
            fresh = entry_from_found(item)
            if fresh.id in seen:
                # Same model, same quantization, another place: one entry with several paths.
                if fresh.path not in seen[fresh.id].paths:
                    seen[fresh.id].paths.append(fresh.path)
                continue
            seen[fresh.id] = fresh
        writes: builtins.list[tuple[str, dict[str, Any], bool]] = []
        events: builtins.list[tuple[str, ModelEntry]] = []
        failures_changed: builtins.list[ModelEntry] = []
        for model_id, fresh in seen.items():
            current = self._entries.get(model_id)
            if current is None:
                self._entries[model_id] = fresh
                writes.append((model_id, fresh.discovered(), False))
                events.append(("added", fresh))
                if fresh.load_failure is not None:
                    failures_changed.append(fresh)
                continue
            for name in DISCOVERED:
                setattr(current, name, getattr(fresh, name))
            current.missing = False
            remembered = current.load_failure
            failure = remembered if remembered is not None and remembered.holds(current.parts) else fresh.load_failure
            if failure != remembered:
                current.load_failure = failure
                failures_changed.append(current)
            writes.append((model_id, current.discovered(), False))
            events.append(("changed", current))
        if complete:
            for model_id, entry in self._entries.items():
                if model_id not in seen and not entry.missing and not entry.is_remote:
                    entry.missing = True
                    writes.append((model_id, entry.discovered(), True))
                    events.append(("changed", entry))
        self._store.upsert_models(writes)
        for entry in failures_changed:
            self._store.set_options(entry.id, entry.options())
        for event, entry in events:
            self._emit(event, entry)

    # -- user edits ------------------------------------------------------------------------
    def set_enabled(self, name: str, enabled: bool) -> ModelEntry:
        entry = self.resolve(name)
        entry.enabled = enabled
        self._store.set_enabled(entry.id, enabled)
        self._emit("changed", entry)
        return entry

    def set_aliases(self, name: str, aliases: builtins.list[str]) -> ModelEntry:
        entry = self.resolve(name)
        clean = list(dict.fromkeys(a.strip() for a in aliases if a.strip()))
        for alias in clean:
            if not _ALIAS_RE.match(alias) or alias in RESERVED_NAMES:
                raise InvalidRequest(f"'{alias}' is not a valid alias", param="aliases")
            owner = self._entries.get(alias) or self.get(alias)
            if owner is not None and owner.id != entry.id:
                raise InvalidRequest(f"'{alias}' already names the model '{owner.id}'", param="aliases")
        for alias in entry.aliases:
            self._aliases.pop(alias, None)
        entry.aliases = clean
        self._aliases.update({alias: entry.id for alias in clean})
        self._store.set_aliases(entry.id, clean)
        self._emit("changed", entry)
        return entry

    def set_capabilities(self, name: str, capabilities: builtins.list[str] | None) -> ModelEntry:
        """None returns to the inferred capabilities. Users may add their own tags."""
        entry = self.resolve(name)
        if capabilities is not None:
            capabilities = list(dict.fromkeys(c.strip().lower() for c in capabilities if c.strip()))
        entry.capabilities_override = capabilities
        self._store.set_capabilities(entry.id, capabilities)
        self._emit("changed", entry)
        return entry

    def set_options(self, name: str, *, weight: float | None = None, fallbacks: builtins.list[str] | None = None,
                    replicas: int | None = None) -> ModelEntry:
        entry = self.resolve(name)
        if weight is not None:
            if not weight >= 0:
                raise InvalidRequest("weight must be a number >= 0", param="weight")
            entry.weight = float(weight)
        if fallbacks is not None:
            resolved = [self.resolve(f).id for f in fallbacks]
            if entry.id in resolved:
                raise InvalidRequest("a model cannot be its own fallback", param="fallbacks")
            entry.fallbacks = resolved
        if replicas is not None:
            if not 1 <= replicas <= 16:
                raise InvalidRequest("replicas must be between 1 and 16", param="replicas")
            entry.replicas = replicas
        self._store.set_options(entry.id, entry.options())
        self._emit("changed", entry)
        return entry

    def set_parallel(self, name: str, parallel: int | None) -> ModelEntry:
        """Requests each of its workers decodes together, from its next load; None returns to the configured
        default (Config.parallel, else auto)."""
        entry = self.resolve(name)
        if parallel is not None and not 1 <= parallel <= MAX_PARALLEL:
            raise InvalidRequest(f"parallel must be between 1 and {MAX_PARALLEL}", param="parallel")
        entry.parallel = parallel
        self._store.set_options(entry.id, entry.options())
        self._emit("changed", entry)
        return entry

    def add_remote(self, model_id: str, remote: dict[str, Any], *, capabilities: builtins.list[str],
                   context_length: int | None = None, display_name: str | None = None) -> ModelEntry:
        """Register a model served by another OpenAI-compatible server; routed like a local one."""
        if not _ALIAS_RE.match(model_id) or model_id in RESERVED_NAMES:
            raise InvalidRequest(f"'{model_id}' is not a valid model id", param="id")
        existing = self.get(model_id)
        if existing is not None and not existing.is_remote:
            raise InvalidRequest(f"'{model_id}' already names a local model", param="id")
        name, _, tag = model_id.partition(":")
        entry = ModelEntry(
            id=model_id, name=name, tag=tag or "remote", source="remote", path=remote["base_url"],
            paths=[remote["base_url"]], parts=[], projector=None, display_name=display_name or model_id,
            metadata={"context_length": context_length, "size": 0}, inferred_capabilities=list(capabilities),
            remote=dict(remote),
        )
        if existing is not None:
            entry.aliases, entry.enabled, entry.use_count, entry.last_used = (
                existing.aliases, existing.enabled, existing.use_count, existing.last_used)
        self._entries[model_id] = entry
        self._store.upsert_model(model_id, entry.discovered(), missing=False)
        self._emit("added" if existing is None else "changed", entry)
        return entry

    def remove(self, name: str) -> ModelEntry:
        """Forget a model (remote backends; local files are only ever marked missing by scans)."""
        entry = self.resolve(name)
        for alias in entry.aliases:
            self._aliases.pop(alias, None)
        del self._entries[entry.id]
        self._store.delete_model(entry.id)
        self._emit("removed", entry)
        return entry

    def set_default(self, name: str) -> ModelEntry:
        entry = self.resolve(name)
        self._default_id = entry.id
        self._store.set_setting("default_model", entry.id)
        self._emit("changed", entry)
        return entry

    # -- runtime ----------------------------------------------------------------------------
    def set_load_failure(self, model_id: str, reason: str | None) -> None:
        """Why the model's files failed to load: it is not tried again until they change or this is set to None
        (it loaded, or the user retries it). Persisted."""
        entry = self._entries.get(model_id)
        if entry is None or entry.load_failure is None and reason is None:  # removed while it loaded; no news
            return
        entry.load_failure = None if reason is None else LoadFailure.now(reason, entry.parts)
        self._store.set_options(entry.id, entry.options())
        self._emit("changed", entry)

    def record_use(self, model_id: str, when: float | None = None) -> None:
        entry = self._entries[model_id]
        entry.use_count += 1
        entry.last_used = time.time() if when is None else when
        self._store.record_use(model_id, entry.use_count, entry.last_used)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _emit(self, event: str, entry: ModelEntry) -> None:
        for listener in list(self._listeners):
            listener(event, entry)

    def _load(self) -> None:
        for row in self._store.models():
            discovered = row["discovered"]
            entry = ModelEntry(
                id=row["id"],
                **{name: discovered.get(name) for name in DISCOVERED},
                weight=row["options"].get("weight", 1.0),
                fallbacks=row["options"].get("fallbacks", []),
                replicas=row["options"].get("replicas", 1),
                parallel=row["options"].get("parallel"),
                load_failure=LoadFailure.from_dict(row["options"].get("load_failure")),
                capabilities_override=row["capabilities"],
                aliases=row["aliases"],
                enabled=row["enabled"],
                missing=row["missing"],
                use_count=row["use_count"],
                last_used=row["last_used"],
            )
            self._entries[entry.id] = entry
            self._aliases.update({alias: entry.id for alias in entry.aliases})
