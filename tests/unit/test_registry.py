"""The registry: lookups, merges of scans, user edits that survive restarts and re-scans."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.catalog.registry import Registry
from app.core.config import Config
from app.core.engine import Engine
from app.core.errors import InvalidRequest, ModelNotFound
from app.core.services import Models
from app.core.storage.store import Store
from tests.support.models import found


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "registry.sqlite3"


def test_lookup_by_id_and_alias(db: Path) -> None:
    registry = Registry(Store(db))
    registry.sync([found("smol", "q4_1", "/m/smol.gguf"), found("qwen", "q8_0", "/m/qwen.gguf")])
    registry.set_aliases("smol:q4_1", ["tiny", "gpt-4o-mini"])
    assert registry.get("tiny").id == "smol:q4_1"
    assert registry.resolve("gpt-4o-mini").id == "smol:q4_1"
    assert registry.get("nope") is None
    with pytest.raises(ModelNotFound):
        registry.resolve("nope")
    with pytest.raises(InvalidRequest, match="already names"):
        registry.set_aliases("qwen:q8_0", ["tiny"])
    with pytest.raises(InvalidRequest, match="not a valid alias"):
        registry.set_aliases("qwen:q8_0", ["auto"])
    # Replacing aliases frees the old ones.
    registry.set_aliases("smol:q4_1", ["small"])
    assert registry.get("tiny") is None and registry.get("small").id == "smol:q4_1"


def test_capabilities_are_inferred_and_editable(db: Path) -> None:
    registry = Registry(Store(db))
    registry.sync([
        found("chat", "q4_0", "/m/chat.gguf", template="{% for tool in tools %}{% endfor %}"),
        found("base", "q4_0", "/m/base.gguf", template=None),
        found("embed", "f16", "/m/embed.gguf", arch="bert", template=None, pooling=1),
        found("see", "q4_0", "/m/see.gguf", projector="/m/mmproj-see.gguf"),
    ])
    assert registry.resolve("chat:q4_0").capabilities == ["chat", "completion", "tools"]
    assert registry.resolve("base:q4_0").capabilities == ["completion"]
    assert registry.resolve("embed:f16").capabilities == ["embeddings"]
    assert "vision" in registry.resolve("see:q4_0").capabilities
    registry.set_capabilities("base:q4_0", ["completion", "Code"])
    assert registry.resolve("base:q4_0").capabilities == ["completion", "code"]
    registry.set_capabilities("base:q4_0", None)
    assert registry.resolve("base:q4_0").capabilities == ["completion"]


def test_edits_and_usage_survive_restart_and_rescan(db: Path) -> None:
    store = Store(db)
    registry = Registry(store)
    models = [found("smol", "q4_1", "/m/smol.gguf"), found("qwen", "q8_0", "/m/qwen.gguf")]
    registry.sync(models)
    registry.set_enabled("qwen:q8_0", False)
    registry.set_aliases("smol:q4_1", ["tiny"])
    registry.set_capabilities("smol:q4_1", ["chat", "arabic_nlp"])
    registry.set_default("qwen:q8_0")
    registry.record_use("smol:q4_1", when=1234.5)
    registry.record_use("smol:q4_1", when=2000.0)
    store.close()  # usage is written in the background; a clean stop flushes it

    again = Registry(Store(db))
    again.sync(models)
    smol = again.resolve("tiny")
    assert (smol.use_count, smol.last_used, smol.capabilities) == (2, 2000.0, ["chat", "arabic_nlp"])
    assert again.resolve("qwen:q8_0").enabled is False
    assert again.default_id == "qwen:q8_0"


def test_vanished_files_are_marked_missing_not_forgotten(db: Path) -> None:
    engine = Engine(Config(discovery=False), Store(db))  # builds no worker; only for what routing may use
    registry = engine.registry
    registry.sync([found("smol", "q4_1", "/m/smol.gguf"), found("qwen", "q8_0", "/m/qwen.gguf")])
    registry.set_aliases("qwen:q8_0", ["q"])
    registry.sync([found("smol", "q4_1", "/m/smol.gguf")])
    qwen = registry.resolve("q")
    assert qwen.missing and qwen not in Models(engine).available()
    # A partial scan (only some sources) concludes nothing about the rest.
    registry.sync([], complete=False)
    assert not registry.resolve("smol:q4_1").missing
    # Back on disk: present again, the alias kept.
    registry.sync([found("smol", "q4_1", "/m/smol.gguf"), found("qwen", "q8_0", "/m/qwen.gguf")])
    assert not Registry(Store(db)).resolve("q").missing


def test_same_model_in_two_places_is_one_entry_and_versions_are_listed(db: Path) -> None:
    registry = Registry(Store(db))
    registry.sync([
        found("smol", "q4_1", "/a/smol.gguf"),
        found("smol", "q4_1", "/b/smol.gguf", source="lmstudio"),
        found("smol", "q8_0", "/a/smol-q8.gguf"),
    ])
    entry = registry.resolve("smol:q4_1")
    assert entry.paths == ["/a/smol.gguf", "/b/smol.gguf"] and entry.path == "/a/smol.gguf"
    assert registry.versions("smol:q4_1") == ["smol:q8_0"]
    assert len(registry.list()) == 2


def test_default_and_listeners(db: Path) -> None:
    registry = Registry(Store(db))
    events: list[tuple[str, str]] = []
    registry.subscribe(lambda event, entry: events.append((event, entry.id)))
    registry.sync([found("base", "q4_0", "/m/base.gguf", template=None),
                   found("smol", "q4_1", "/m/smol.gguf", source="embedded")])
    assert registry.default_id == "smol:q4_1", "the embedded model is the default until the user picks one"
    assert ("added", "smol:q4_1") in events


def test_a_database_from_the_first_version_is_migrated(db: Path) -> None:
    import sqlite3

    old = sqlite3.connect(db)
    old.executescript("""
        CREATE TABLE models (id TEXT PRIMARY KEY, discovered TEXT NOT NULL, enabled INTEGER NOT NULL DEFAULT 1,
            aliases TEXT NOT NULL DEFAULT '[]', capabilities TEXT, use_count INTEGER NOT NULL DEFAULT 0,
            last_used REAL, missing INTEGER NOT NULL DEFAULT 0);
    """)
    old.close()
    registry = Registry(Store(db))
    registry.sync([found("smol", "q4_1", "/m/smol.gguf")])
    registry.set_options("smol:q4_1", weight=2.5)
    assert Registry(Store(db)).resolve("smol:q4_1").weight == 2.5


def test_parallel_is_a_model_option_that_survives_restart(db: Path) -> None:
    store = Store(db)
    registry = Registry(store)
    registry.sync([found("smol", "q4_1", "/m/smol.gguf"), found("qwen", "q8_0", "/m/qwen.gguf")])
    assert registry.resolve("smol:q4_1").parallel is None  # the configured default until set
    registry.set_parallel("smol:q4_1", 6)
    registry.set_options("smol:q4_1", replicas=2)  # the other options keep it
    registry.set_parallel("qwen:q8_0", 3)
    registry.set_parallel("qwen:q8_0", None)
    for bad in (0, 65):
        with pytest.raises(InvalidRequest, match="between 1 and 64") as refused:
            registry.set_parallel("smol:q4_1", bad)
        assert refused.value.param == "parallel"
    store.close()

    again = Registry(Store(db))
    again.sync([found("smol", "q4_1", "/m/smol.gguf"), found("qwen", "q8_0", "/m/qwen.gguf")])
    assert (again.resolve("smol:q4_1").parallel, again.resolve("smol:q4_1").replicas) == (6, 2)
    assert again.resolve("qwen:q8_0").parallel is None
