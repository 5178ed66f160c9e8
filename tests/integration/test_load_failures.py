"""Load failures remembered and explained, on real servers with models derived from the default one.

llama.cpp's own log reaches the worker log (and a model's details); a scan flags an architecture the installed
llama.cpp cannot load; a model that failed to load is not tried again, by name (503 with the reason) or by `auto`
(filtered, with the reason), across restarts, until its file changes or it is loaded by hand.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import gguf
import httpx
import pytest
from gguf.scripts.gguf_new_metadata import MetadataDetails

from app.core.config import Config
from app.core.engine import Engine
from tests.support.models import derive_model
from tests.support.servers import Served, start_server

DEFAULT_ID = "smollm2-135m-instruct:q4_1"
FOO_ID = "foo-arch:q4_1"  # general.architecture 'foo': the scan can tell
BLOCKS_ID = "smol-blocks:q4_1"  # one block more than it has tensors for: only loading can tell
HELLO = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Path:
    folder = tmp_path_factory.mktemp("unloadable") / "models"
    folder.mkdir()
    derive_model(default_model, folder / "Foo-Arch.Q4_1.gguf", arch="foo")
    derive_model(default_model, folder / "Smol-Blocks.Q4_1.gguf",
                 metadata={"llama.block_count": MetadataDetails(gguf.GGUFValueType.UINT32, 31)})
    return folder


@pytest.fixture
def serve(tmp_path: Path, models: Path) -> Iterator[object]:
    """start(): a server on `models` with this test's SWITCHBOARD_HOME (the same one each time: a restart)."""
    running: list[Served] = []

    def start() -> httpx.Client:
        for served in running:
            served.stop()
        running.append(start_server(tmp_path, "--model-dir", str(models)))
        return httpx.Client(base_url=running[-1].base_url, timeout=120)

    yield start
    for served in running:
        served.stop()


def loads(tmp_path: Path, model_id: str) -> int:
    """How many times a worker started loading the model (each start writes one line to its log first)."""
    log = tmp_path / "sbhome" / "data" / "logs" / f"{model_id.replace(':', '_')}.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return sum(line.startswith("=== ") and " loading " in line for line in lines)


def candidate(decision: dict, model_id: str) -> dict:
    return next(c for c in decision["candidates"] if c["model_id"] == model_id)


def test_an_architecture_llama_cpp_cannot_load_is_flagged_and_never_tried(serve, tmp_path: Path) -> None:
    client = serve()
    scan = client.post("/api/scan").json()
    assert FOO_ID in scan["models"]
    problem = next(p for p in scan["problems"] if p["path"].endswith("Foo-Arch.Q4_1.gguf"))
    assert "cannot load architecture 'foo'" in problem["reason"] and "llama-cpp-python" in problem["reason"]
    info = client.get(f"/api/models/{FOO_ID}").json()
    assert info["health"] == "unhealthy" and "architecture 'foo'" in info["health_reason"]
    assert "architecture 'foo'" in info["load_failure"]

    named = client.post("/v1/chat/completions", json={**HELLO, "model": FOO_ID})
    assert named.status_code == 503 and "architecture 'foo'" in named.json()["error"]["message"]
    auto = client.post("/api/route", json={**HELLO, "model": "auto"}).json()
    assert auto["model_id"] != FOO_ID
    filtered = candidate(auto, FOO_ID)
    assert filtered["filtered"] and "architecture 'foo'" in filtered["reason"]
    assert loads(tmp_path, FOO_ID) == 0  # no worker was ever started for it

    client = serve()  # a restart, same SWITCHBOARD_HOME
    info = client.get(f"/api/models/{FOO_ID}").json()
    assert info["health"] == "unhealthy" and "architecture 'foo'" in info["health_reason"]

    # Loading by hand is the retry: tried again, and now llama.cpp's own words say why.
    retried = client.post(f"/api/models/{FOO_ID}/load")
    assert retried.status_code == 503
    assert "llama.cpp: error loading model: unknown model architecture: 'foo'" in retried.json()["error"]["message"]
    assert loads(tmp_path, FOO_ID) == 1
    info = client.get(f"/api/models/{FOO_ID}").json()
    assert "unknown model architecture: 'foo'" in info["load_failure"]
    assert any("unknown model architecture: 'foo'" in line for line in info["log_tail"])
    assert 0 < len(info["log_tail"]) <= 20
    assert client.post("/v1/chat/completions", json={**HELLO, "model": FOO_ID}).status_code == 503
    assert loads(tmp_path, FOO_ID) == 1


def test_a_load_failure_the_scan_cannot_know_is_remembered_until_the_file_changes(serve, tmp_path: Path,
                                                                                   models: Path) -> None:
    client = serve()
    assert client.get(f"/api/models/{BLOCKS_ID}").json()["health"] == "unknown"
    first = client.post("/v1/chat/completions", json={**HELLO, "model": BLOCKS_ID})
    assert first.status_code == 503
    assert "tensor 'blk.30.attn_norm.weight' not found" in first.json()["error"]["message"]
    assert loads(tmp_path, BLOCKS_ID) == 1
    again = client.post("/v1/chat/completions", json={**HELLO, "model": BLOCKS_ID})
    assert again.status_code == 503 and "blk.30.attn_norm.weight" in again.json()["error"]["message"]
    assert loads(tmp_path, BLOCKS_ID) == 1  # remembered: not loaded again
    info = client.get(f"/api/models/{BLOCKS_ID}").json()
    assert info["health"] == "unhealthy" and "blk.30.attn_norm.weight" in info["health_reason"]
    # llama.cpp's log of the load, with what it read from the file, up to its error.
    assert any("tensor 'blk.30.attn_norm.weight' not found" in line for line in info["log_tail"])

    auto = client.post("/v1/chat/completions", json={**HELLO, "model": "auto"})
    assert auto.status_code == 200 and auto.headers["x-switchboard-model"] == DEFAULT_ID
    assert "x-switchboard-retried-from" not in auto.headers
    decision = client.get("/api/decisions").json()["data"][0]
    assert decision["model_id"] == DEFAULT_ID
    assert "blk.30.attn_norm.weight" in candidate(decision, BLOCKS_ID)["reason"]
    served_log = client.get(f"/api/models/{DEFAULT_ID}").json()["log_tail"]
    assert served_log  # its load, as llama.cpp told it
    assert client.post("/v1/chat/completions", json={**HELLO, "model": "auto"}).status_code == 200
    assert client.get(f"/api/models/{DEFAULT_ID}").json()["log_tail"] == served_log  # requests log nothing

    client = serve()  # a restart: the scan finds nothing wrong with the file, the failure is remembered
    info = client.get(f"/api/models/{BLOCKS_ID}").json()
    assert info["health"] == "unhealthy" and "blk.30.attn_norm.weight" in info["health_reason"]
    assert client.post("/v1/chat/completions", json={**HELLO, "model": BLOCKS_ID}).status_code == 503
    assert loads(tmp_path, BLOCKS_ID) == 1

    path = models / "Smol-Blocks.Q4_1.gguf"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed
    client.post("/api/scan")
    assert client.get(f"/api/models/{BLOCKS_ID}").json()["load_failure"] is None
    assert client.post("/v1/chat/completions", json={**HELLO, "model": BLOCKS_ID}).status_code == 503
    assert loads(tmp_path, BLOCKS_ID) == 2  # tried again, failed again, remembered again
    assert "blk.30.attn_norm.weight" in client.get(f"/api/models/{BLOCKS_ID}").json()["load_failure"]


async def test_a_successful_load_forgets_a_remembered_failure(sb_home: Path) -> None:
    engine = Engine(Config(discovery=False, n_ctx=2048, prompt_cache_bytes=0))
    await engine.rescan()
    try:
        engine.registry.set_load_failure(DEFAULT_ID, "failed once, for a reason that has gone since")
        assert engine.model_health(DEFAULT_ID)[0].value == "unhealthy"
        await engine.pool.acquire(engine.registry.resolve(DEFAULT_ID))
        assert engine.registry.resolve(DEFAULT_ID).load_failure is None
        assert engine.model_health(DEFAULT_ID)[0].value == "healthy"
    finally:
        await engine.close()
