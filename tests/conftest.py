"""Shared fixtures: the real default model, isolated state dirs, a real `switchboard serve` on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from app.core.storage.store import Store
from tests.support.examples import SCALE, examples
from tests.support.models import find_default_model
from tests.support.servers import Served, start_server

# Property tests without their own count try Hypothesis's 100 examples, scaled like the others.
if SCALE != 1.0:
    settings.register_profile("scaled", max_examples=examples(100))
    settings.load_profile("scaled")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A real SQLite store in this test's folder."""
    s = Store(tmp_path / "sb.db")
    yield s
    s.close()


@pytest.fixture(scope="session")
def default_model() -> Path:
    return find_default_model()


@pytest.fixture
def sb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test's own SWITCHBOARD_HOME, and a HOME with no models in it."""
    home = tmp_path / "sbhome"
    monkeypatch.setenv("SWITCHBOARD_HOME", str(home))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SWITCHBOARD_API_KEY", raising=False)
    return home


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = start_server(tmp_path_factory.mktemp("served"))
    yield served
    served.stop()
