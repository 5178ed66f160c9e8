"""Getting models from the hub: search, the file list with fit verdicts, pulls with progress (cancelled, then
finished) and bad input, through the real server, the real CLI and the real huggingface_hub, against a local server
that answers as the hub does (HF_ENDPOINT)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.hub import NOT_GGUF, SMOL, SMOL_FILE, VISION, FakeHub, hub_repos
from tests.support.servers import Served, start_server

BUDGET = 1 << 30  # the default model fits; the 3 GiB split model does not
SMOL_ID = "test/smollm2-135m-instruct-gguf:q4_1"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    with FakeHub(hub_repos(tmp_path_factory.mktemp("hubfiles"))) as fake:
        yield fake


def hf_env(hub: FakeHub, hf_home: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"),
            "HF_HUB_DISABLE_TELEMETRY": "1", "SWITCHBOARD_MEMORY_BUDGET_BYTES": str(BUDGET)}


@pytest.fixture(scope="module")
def server(hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("server")
    served = start_server(tmp, env=hf_env(hub, tmp / "hf"))
    yield served
    served.stop()


def pull_events(server: Served, model: str, *, stop_at: str | None = None) -> list[dict[str, Any]]:
    """The pull's server-sent events, read until the end (or until the first `stop_at` event: then hung up)."""
    events: list[dict[str, Any]] = []
    with httpx.stream("POST", f"{server.base_url}/api/models/pull", json={"model": model},
                      timeout=httpx.Timeout(30, read=120)) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append(json.loads(line[6:]))
                assert events[-1]["event"] == kind
                if kind == stop_at:
                    break
    return events


def model_ids(server: Served) -> set[str]:
    return {m["id"] for m in httpx.get(f"{server.base_url}/api/models").json()["data"]}


def test_search_finds_gguf_repositories(server: Served) -> None:
    found = httpx.get(f"{server.base_url}/api/library/search", params={"q": "smollm2"}).json()["data"]
    assert [hit["id"] for hit in found] == [SMOL]
    everything = httpx.get(f"{server.base_url}/api/library/search", params={"q": "test/"}).json()["data"]
    assert {hit["id"] for hit in everything} == {SMOL, VISION}  # the safetensors-only repo is not GGUF


def test_the_file_list_has_sizes_and_fit_verdicts_from_headers_only(server: Served, hub: FakeHub) -> None:
    listing = httpx.get(f"{server.base_url}/api/library/files", params={"repo": SMOL}).json()
    assert listing["budget_bytes"] == BUDGET
    by_quant = {m["quant"]: m for m in listing["models"]}
    small, big = by_quant["q4_1"], by_quant["q8_0"]
    assert (small["file"], small["size"], small["fits"], small["pull"]) == (
        SMOL_FILE, 98362432, True, f"{SMOL}:q4_1")
    assert small["architecture"] == "llama" and 98362432 < small["estimate_bytes"] <= BUDGET
    assert len(big["files"]) == 2 and big["size"] == 3 << 30 and big["fits"] is False
    assert big["estimate_bytes"] > BUDGET and listing["projectors"] == []
    # Only the headers were read: range requests of the first bytes, never a whole file.
    reads = [r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]
    assert reads and all(r[2] is not None and r[2].startswith("bytes=0-") for r in reads)

    vision = httpx.get(f"{server.base_url}/api/library/files", params={"repo": VISION}).json()
    assert [m["file"] for m in vision["models"]] == ["Tiny-Q8_0.gguf"]
    assert sorted(p["file"] for p in vision["projectors"]) == ["mmproj-Tiny-f16.gguf", "mmproj-Tiny-f32.gguf"]


def test_a_cancelled_pull_registers_nothing_and_a_later_pull_finishes_and_chats(server: Served, hub: FakeHub) -> None:
    release = hub.hold_next_download(after=24 << 20)
    cancelled = pull_events(server, SMOL, stop_at="progress")  # the client hangs up in the middle
    assert [e["event"] for e in cancelled] == ["start", "progress"]
    assert cancelled[0]["total"] == 98362432 and 0 < cancelled[1]["done"] < 98362432
    assert SMOL_ID not in model_ids(server)
    release.set()

    events = pull_events(server, SMOL)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) == {"progress"}
    done = [e["done"] for e in events if e["event"] == "progress"]
    assert done == sorted(done) and done[-1] == 98362432
    assert events[-1]["model"] == SMOL_ID
    path = Path(events[-1]["path"])
    assert path.is_relative_to(server.home.parent / "hf" / "hub") and path.stat().st_size == 98362432
    # Two whole downloads: the first was stopped (or the second would have found the file cached).
    assert len([r for r in hub.requests if r[0] == "GET" and r[1].endswith(SMOL_FILE) and r[2] is None]) == 2
    assert not list((server.home.parent / "hf" / "hub").rglob("*.incomplete"))

    assert SMOL_ID in model_ids(server)  # no rescan was asked for
    answer = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=120, json={
        "model": SMOL_ID, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello"}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == SMOL_ID and answer.json()["choices"][0]["message"]["content"]


def test_a_pull_brings_the_smallest_projector_with_the_model(server: Served) -> None:
    events = pull_events(server, f"{VISION}:q8_0")
    assert events[0]["files"] == ["Tiny-Q8_0.gguf", "mmproj-Tiny-f16.gguf"]
    assert events[-1]["event"] == "done" and events[-1]["model"] == "test/tiny-vision-gguf:q8_0"
    info = httpx.get(f"{server.base_url}/api/models/test/tiny-vision-gguf:q8_0").json()
    assert info["projector"].endswith("mmproj-Tiny-f16.gguf")


@pytest.mark.parametrize(("model", "status", "code"), [
    ("nobody/nothing", 404, "repo_not_found"),
    (f"{SMOL}:q2_k", 404, "quant_not_found"),
    (NOT_GGUF, 400, "not_gguf"),
    ("not a repo", 400, "invalid_request"),
])
def test_bad_input_is_a_clear_error_before_any_event(server: Served, model: str, status: int, code: str) -> None:
    response = httpx.post(f"{server.base_url}/api/models/pull", json={"model": model})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["param"] == "model" and error["message"]


def test_bad_input_to_the_library_is_a_clear_error(server: Served) -> None:
    missing = httpx.get(f"{server.base_url}/api/library/files", params={"repo": "nobody/nothing"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "repo_not_found"
    empty = httpx.get(f"{server.base_url}/api/library/search", params={"q": " "})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "q"
    unnamed = httpx.get(f"{server.base_url}/api/library/files")
    assert unnamed.status_code == 400 and unnamed.json()["error"]["param"] == "repo"


def cli(tmp: Path, hub: FakeHub, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"SWITCHBOARD_HOME": str(tmp / "sb"), "HOME": str(tmp / "home"), "PATH": "/usr/bin:/bin",
           **hf_env(hub, tmp / "hf")}
    return subprocess.run([sys.executable, "-m", "app", "pull", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_cli_pulls_through_the_running_server(server: Served, hub: FakeHub, tmp_path: Path) -> None:
    result = cli(tmp_path, hub, "--url", server.base_url, f"{VISION}:Q8_0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "test/tiny-vision-gguf:q8_0" and "Pulling test/Tiny-Vision-GGUF" in result.stderr
    refused = cli(tmp_path, hub, "--url", server.base_url, f"{SMOL}:q2_k")
    assert refused.returncode == 1 and "q2_k" in refused.stderr and "offers: q4_1, q8_0" in refused.stderr


def test_the_cli_pulls_by_itself_without_a_server(hub: FakeHub, tmp_path: Path) -> None:
    result = cli(tmp_path, hub, "--url", "http://127.0.0.1:9", VISION)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "test/tiny-vision-gguf:q8_0" and "100%" in result.stderr
    assert list((tmp_path / "hf" / "hub" / "models--test--Tiny-Vision-GGUF" / "snapshots").glob("*/Tiny-Q8_0.gguf"))
    not_gguf = cli(tmp_path, hub, "--url", "http://127.0.0.1:9", NOT_GGUF)
    assert not_gguf.returncode == 1 and "has no GGUF files" in not_gguf.stderr
