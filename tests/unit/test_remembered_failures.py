"""A remembered load failure: kept with the model (persisted), forgotten when its file or llama.cpp changes or when
it is cleared, and what routing does with it; the worker log's bounded tail. Real store, registry and router."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from app.core.catalog.model import LoadFailure
from app.core.catalog.registry import Registry
from app.core.config import Config
from app.core.errors import ModelUnavailable
from app.core.routing.health import HealthBook
from app.core.routing.latency_stats import TargetStats
from app.core.routing.needs import translate
from app.core.routing.quota import QuotaManager
from app.core.routing.request import RouteRequest
from app.core.routing.router import RequestRouter
from app.core.runtime.local import worker_log
from app.core.runtime.pool import ModelPool
from app.core.storage.store import Store
from tests.support.models import found

HELLO = {"messages": [{"role": "user", "content": "Hello there"}]}
REASON = "Model 'bad:q4_0' failed to load: ValueError: Failed to load model from file (llama.cpp: unknown model ...)"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    paths = {}
    for name in ("good", "bad"):
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(b"GGUF" + bytes(100))
        paths[name] = str(path)
    return paths


def scanned(files: dict[str, str], refusal: str | None = None) -> list:
    bad = found("bad", "q4_0", files["bad"])
    bad.load_refusal = refusal
    return [found("good", "q4_0", files["good"]), bad]


def test_a_failure_is_persisted_and_holds_while_the_file_is_unchanged(store: Store, files: dict[str, str]) -> None:
    registry = Registry(store)
    registry.sync(scanned(files))
    heard: list[tuple[str, str]] = []
    registry.subscribe(lambda event, entry: heard.append((event, entry.id)))
    registry.set_load_failure("bad:q4_0", REASON)
    assert heard == [("changed", "bad:q4_0")]
    registry.set_load_failure("good:q4_0", None)  # it loaded: nothing was remembered, nothing to tell
    assert heard == [("changed", "bad:q4_0")]

    again = Registry(store)  # a restart
    failure = again.resolve("bad:q4_0").load_failure
    assert failure is not None and failure.reason == REASON
    again.sync(scanned(files))
    assert again.resolve("bad:q4_0").load_failure == failure
    assert again.resolve("good:q4_0").load_failure is None

    stat = os.stat(files["bad"])
    os.utime(files["bad"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again.sync(scanned(files))
    assert again.resolve("bad:q4_0").load_failure is None
    assert Registry(store).resolve("bad:q4_0").load_failure is None


def test_a_failure_under_another_llama_cpp_no_longer_holds(files: dict[str, str]) -> None:
    failure = LoadFailure.now(REASON, [files["bad"]])
    assert failure.holds([files["bad"]])
    assert not dataclasses.replace(failure, llama="0.0.1").holds([files["bad"]])
    Path(files["bad"]).write_bytes(b"GGUF" + bytes(200))  # another size
    assert not failure.holds([files["bad"]])
    assert LoadFailure.from_dict(failure.to_dict()) == failure


def test_what_a_scan_finds_unloadable_is_a_failure_until_cleared(store: Store, files: dict[str, str]) -> None:
    registry = Registry(store)
    registry.sync(scanned(files, refusal="llama.cpp cannot load architecture 'foo'"))
    assert registry.resolve("bad:q4_0").load_failure.reason == "llama.cpp cannot load architecture 'foo'"
    registry.set_load_failure("bad:q4_0", REASON)  # then loading it said more: that is kept
    registry.sync(scanned(files, refusal="llama.cpp cannot load architecture 'foo'"))
    assert registry.resolve("bad:q4_0").load_failure.reason == REASON
    registry.set_load_failure("bad:q4_0", None)  # retried
    assert Registry(store).resolve("bad:q4_0").load_failure is None


def test_routing_never_tries_a_model_that_failed_to_load(store: Store, files: dict[str, str]) -> None:
    registry = Registry(store)
    registry.sync(scanned(files))
    registry.set_load_failure("bad:q4_0", REASON)
    router = RequestRouter(registry, ModelPool(Config(), store), QuotaManager(store), HealthBook(), TargetStats(),
                           store)

    def request(model: str) -> RouteRequest:
        return RouteRequest("chat", model, (), translate("chat", HELLO))

    with pytest.raises(ModelUnavailable) as named:
        router.route(request("bad:q4_0"))
    assert REASON in named.value.message and "loaded by hand" in named.value.message
    assert named.value.retry_after is None  # nothing to wait for: the file must change, or someone retry
    auto = router.route(request("auto"))
    assert auto.model_id == "good:q4_0"
    bad = next(c for c in auto.candidates if c.model_id == "bad:q4_0")
    assert bad.filtered and bad.reason == f"not loadable: {REASON}"
    registry.set_load_failure("bad:q4_0", None)
    assert router.route(request("bad:q4_0")).model_id == "bad:q4_0"


def test_the_tail_of_a_worker_log_is_bounded_and_from_its_newest_log(tmp_path: Path) -> None:
    old, new = tmp_path / "a.log", tmp_path / "b.log"
    old.write_text("old\n")
    new.write_text("".join(f"line {i}\n" for i in range(100)))
    os.utime(old, (1, 1))
    assert worker_log.tail([old, new, tmp_path / "absent.log"]) == [f"line {i}" for i in range(80, 100)]
    new.write_text("x" * 10_000 + "\nlast\n")
    assert worker_log.tail([new]) == ["last"]  # at most TAIL_BYTES, and never a line cut off at its start
    assert worker_log.tail([tmp_path / "absent.log"]) == []


def test_a_worker_log_past_its_limit_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "m.log"
    with worker_log.open_for_worker(path) as log:
        log.write(b"x" * (worker_log.LIMIT_BYTES + 1))
    with worker_log.open_for_worker(path) as log:
        log.write(b"fresh\n")
    assert path.read_bytes() == b"fresh\n"
    with worker_log.open_for_worker(path) as log:
        log.write(b"more\n")
    assert path.read_bytes() == b"fresh\nmore\n"


def test_a_forgotten_failure_stops_showing_unhealthy_but_a_crash_keeps_showing(tmp_path: Path,
                                                                               files: dict[str, str]) -> None:
    from app.core.engine import Engine
    from app.core.routing.health import Health

    engine = Engine(Config(discovery=False), Store(tmp_path / "db.sqlite3"))  # builds no worker
    engine.registry.sync([found("bad", "q4_0", files["bad"]), found("good", "q4_0", files["good"])])
    engine.registry.set_load_failure("bad:q4_0", REASON)
    engine.health.show("bad:q4_0", Health.UNHEALTHY, REASON)
    engine.health.show("good:q4_0", Health.UNHEALTHY, "the worker process was killed by signal 9")
    engine.registry.set_aliases("good:q4_0", ["g"])  # an edit is no news about a crash
    engine.registry.set_load_failure("bad:q4_0", None)  # the user retries it
    assert engine.shown_health("bad:q4_0") == ("unknown", None)
    assert engine.shown_health("good:q4_0") == ("unhealthy", "the worker process was killed by signal 9")
