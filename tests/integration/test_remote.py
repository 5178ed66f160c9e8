"""RemoteHandle against real OpenAI-compatible servers on loopback: a second Switchboard and llama.cpp's server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.errors import InvalidRequest, ModelUnavailable, WorkerCrashed
from app.core.runtime.remote.handle import RemoteHandle, RemoteSpec
from tests.support.models import make_embedding_model
from tests.support.servers import LLAMA_CPP_SERVER, Served, free_port, start_server

pytestmark = pytest.mark.slow

DEFAULT_ID = "smollm2-135m-instruct:q4_1"
EMBED_ID = "smol-embed:q4_1"
KEY = "remote-test-key-123"
PARIS = [{"role": "system", "content": "You are a helpful assistant."},
         {"role": "user", "content": "What is the capital of France?"}]
COUNTING = {"prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 400, "temperature": 0}


# -- servers --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sb(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[Served]:
    """A second Switchboard: the embedded SmolLM2 plus an embedding variant of it."""
    tmp = tmp_path_factory.mktemp("remote-sb")
    (tmp / "models").mkdir()
    make_embedding_model(default_model, tmp / "models" / "smol-embed.Q4_1.gguf")
    served = start_server(tmp, "--model-dir", str(tmp / "models"))
    yield served
    served.stop()


@pytest.fixture(scope="module")
def sb_keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = start_server(tmp_path_factory.mktemp("remote-keyed"), env={"SWITCHBOARD_API_KEY": KEY})
    yield served
    served.stop()


class LlamaServer:
    """`python -m llama_cpp.server` in its own process group."""

    def __init__(self, tmp: Path, model: Path) -> None:
        self.port = free_port()
        self.log = tmp / f"llama-server-{self.port}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", LLAMA_CPP_SERVER, "--model", str(model), "--host", "127.0.0.1",
                 "--port", str(self.port), "--n_ctx", "2048", "--flash_attn", "true"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base_url}/v1/models", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.kill()
        raise RuntimeError("llama_cpp.server did not start in 60 s")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[LlamaServer]:
    server = LlamaServer(tmp_path_factory.mktemp("llama-server"), default_model)
    yield server
    server.kill()


@contextlib.asynccontextmanager
async def remote(base_url: str, model: str = DEFAULT_ID, **spec: Any) -> AsyncIterator[RemoteHandle]:
    handle = RemoteHandle("remote-model", RemoteSpec(base_url, model, **spec))
    try:
        yield handle
    finally:
        await handle.stop()


async def collect(handle: RemoteHandle, op: str, params: dict[str, Any]) -> tuple[list[dict], dict]:
    chunks: list[dict] = []
    async with contextlib.aclosing(handle.run(op, params)) as messages:
        async for message in messages:
            if message["type"] == "chunk":
                chunks.append(message["data"])
            else:
                assert message["type"] == "done"
                return chunks, message
    raise AssertionError("no done message")


def chat_text(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


# -- spec -----------------------------------------------------------------------------------------------

def test_spec_normalises_the_base_url_and_round_trips() -> None:
    for url in ("http://127.0.0.1:8080", "http://127.0.0.1:8080/", "http://127.0.0.1:8080/v1",
                "HTTP://127.0.0.1:8080/v1/"):
        assert RemoteSpec(url, "m").base_url == "http://127.0.0.1:8080"
    spec = RemoteSpec("https://example.test/api/v1", "gpt", api_key="k", capabilities=["chat"], context_length=8192)
    assert spec.base_url == "https://example.test/api" and spec.api_base == "https://example.test/api/v1"
    assert spec.to_dict() == {"base_url": "https://example.test/api", "model": "gpt", "api_key": "k",
                              "capabilities": ["chat"], "context_length": 8192, "timeout_s": 300.0}
    assert RemoteSpec.from_dict(spec.to_dict()) == spec
    assert RemoteSpec.from_dict({"base_url": "http://h:1", "model": "m"}).capabilities == ["chat", "completion"]


@pytest.mark.parametrize("kwargs, match", [
    ({"base_url": "ftp://h/v1"}, "http"),
    ({"base_url": "127.0.0.1:8080"}, "http"),
    ({"base_url": "http:///v1"}, "host"),
    ({"base_url": "http://h:99999"}, "port"),
    ({"base_url": "http://h/v1?x=1"}, "query"),
    ({"model": " "}, "model"),
    ({"capabilities": ["telepathy"]}, "telepathy"),
    ({"context_length": 0}, "context_length"),
    ({"timeout_s": -1}, "timeout_s"),
])
def test_spec_rejects_bad_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RemoteSpec(**{"base_url": "http://127.0.0.1:1", "model": "m", **kwargs})
    with pytest.raises(ValueError, match="Unknown"):
        RemoteSpec.from_dict({"base_url": "http://h", "model": "m", "colour": "red"})


# -- a second Switchboard -------------------------------------------------------------------------------

async def test_chat_answers_paris_and_reports_usage(sb: Served) -> None:
    async with remote(sb.base_url + "/v1") as handle:
        assert (handle.replica, handle.pid, handle.rss(), handle.alive, handle.busy) == (0, None, 0, True, False)
        chunks, done = await collect(handle, "chat", {"messages": PARIS, "temperature": 0, "max_tokens": 32})
        assert "Paris" in chat_text(chunks)
        assert len(chunks) > 2, "tokens arrive as separate chunks"
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        assert all(c["choices"] for c in chunks), "the usage-only chunk is folded into done"
        usage = done["usage"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        # The remote reuses the prompt it just computed: its cached_tokens come through.
        _, again = await collect(handle, "chat", {"messages": PARIS, "temperature": 0, "max_tokens": 4})
        assert again["usage"]["cached_tokens"] > 0
        assert handle.in_flight == 0 and not handle.busy
    assert not handle.alive


async def test_stream_yields_chunks_as_they_arrive(sb: Served) -> None:
    async with remote(sb.base_url) as handle:
        kinds = []
        async with contextlib.aclosing(handle.run("chat", {"messages": PARIS, "max_tokens": 16,
                                                           "temperature": 0})) as messages:
            async for message in messages:
                kinds.append(message["type"])
                if len(kinds) == 1:
                    assert handle.in_flight == 1 and handle.busy
        assert kinds[-1] == "done" and kinds.count("done") == 1 and kinds.count("chunk") > 3


async def test_completion(sb: Served) -> None:
    async with remote(sb.base_url) as handle:
        chunks, done = await collect(handle, "completion", {"prompt": "One, two, three,", "max_tokens": 6,
                                                            "temperature": 0})
        assert "".join(c["choices"][0]["text"] for c in chunks).strip()
        assert done["usage"]["completion_tokens"] == 6
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_embeddings(sb: Served) -> None:
    async with remote(sb.base_url, EMBED_ID, capabilities=["embeddings"]) as handle:
        messages = [m async for m in handle.run("embeddings", {"input": ["The cat sat.", "A dog ran."]})]
        assert len(messages) == 1 and messages[0]["type"] == "done"
        data = messages[0]["result"]["data"]
        assert [len(d["embedding"]) for d in data] == [576, 576]
        assert isinstance(data[0]["embedding"][0], float)


async def test_probe_and_model_list(sb: Served) -> None:
    async with remote(sb.base_url) as handle:
        ok, latency, reason = await handle.probe()
        assert ok and reason is None and 0 < latency < 5
        assert {DEFAULT_ID, EMBED_ID} <= set(await handle.list_models())


async def test_unknown_model_carries_the_remote_message(sb: Served) -> None:
    async with remote(sb.base_url, "no-such-model") as handle:
        with pytest.raises(ModelUnavailable, match="has no model 'no-such-model'.*does not exist"):
            await collect(handle, "chat", {"messages": PARIS, "max_tokens": 4})
        assert handle.in_flight == 0


async def test_closing_early_cancels_and_the_next_request_is_served(sb: Served) -> None:
    async with remote(sb.base_url) as handle:
        messages = handle.run("completion", {**COUNTING, "max_tokens": 2000})
        for _ in range(3):
            assert (await anext(messages))["type"] == "chunk"
        await messages.aclose()
        assert handle.in_flight == 0 and handle.jobs_cancelled == 1
        # The remote worker serves one job at a time: this one only runs once the first was stopped.
        _, done = await asyncio.wait_for(collect(handle, "completion", {"prompt": "Hi", "max_tokens": 2}), 15)
        assert done["usage"]["completion_tokens"] == 2


async def test_api_key(sb_keyed: Served) -> None:
    async with remote(sb_keyed.base_url, api_key=KEY) as handle:
        chunks, _ = await collect(handle, "chat", {"messages": PARIS, "temperature": 0, "max_tokens": 32})
        assert "Paris" in chat_text(chunks)
        assert (await handle.probe())[0]
    async with remote(sb_keyed.base_url) as handle:
        with pytest.raises(InvalidRequest, match="HTTP 401.*API key"):
            await collect(handle, "chat", {"messages": PARIS, "max_tokens": 4})
        ok, _, reason = await handle.probe()
        assert not ok and "401" in reason
    async with remote(sb_keyed.base_url, api_key="wrong") as handle:
        with pytest.raises(InvalidRequest, match="401"):
            await handle.list_models()


# -- llama-cpp-python's own server ----------------------------------------------------------------------

async def test_llama_cpp_server_chat_stream_and_usage(llama_server: LlamaServer) -> None:
    async with remote(llama_server.base_url, "whatever-it-serves") as handle:
        assert (await handle.probe())[0]
        chunks, done = await collect(handle, "chat", {"messages": PARIS, "temperature": 0, "max_tokens": 32})
        assert "Paris" in chat_text(chunks)
        assert len(chunks) > 2
        # It streams no usage: completion tokens are the content chunks, prompt tokens unknown (0).
        content = [c for c in chunks if c["choices"][0]["delta"].get("content")]
        assert done["usage"]["completion_tokens"] == len(content) > 0
        chunks, done = await collect(handle, "completion", {"prompt": "One, two, three,", "max_tokens": 6})
        assert done["usage"]["completion_tokens"] == 6


# -- failures -------------------------------------------------------------------------------------------

async def test_closed_port_is_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with remote(url) as handle:
        with pytest.raises(WorkerCrashed, match=f"remote backend {url} unreachable"):
            await collect(handle, "chat", {"messages": PARIS})
        ok, latency, reason = await handle.probe(timeout_s=2)
        assert not ok and latency < 2 and "unreachable" in reason
        with pytest.raises(WorkerCrashed):
            await handle.list_models()
        assert handle.in_flight == 0


class Redirector(BaseHTTPRequestHandler):
    """307s every request to `target` (its own origin when empty) + "/moved" + path; serves a model list there."""

    target = ""
    seen: list[tuple[str, str | None]] = []

    def _answer(self) -> None:
        self.seen.append((self.path, self.headers.get("authorization")))
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path.startswith("/moved"):
            body = b'{"object": "list", "data": [{"id": "moved-model"}]}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
        else:
            body = b""
            origin = self.target or f"http://127.0.0.1:{self.server.server_address[1]}"
            self.send_response(307)
            self.send_header("location", origin + "/moved" + self.path)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def redirecting(target: str = "") -> Iterator[tuple[str, list]]:
    handler = type("Handler", (Redirector,), {"target": target, "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.seen
    finally:
        server.shutdown()
        server.server_close()


async def test_redirects_to_another_host_are_not_followed(sb: Served) -> None:
    # "localhost" is another host name than 127.0.0.1, though it reaches the same server.
    with redirecting(f"http://localhost:{sb.port}") as (url, seen):
        async with remote(url, api_key="secret") as handle:
            with pytest.raises(ModelUnavailable, match="redirected /v1/chat/completions to .*not followed"):
                await collect(handle, "chat", {"messages": PARIS, "max_tokens": 4})
            ok, _, reason = await handle.probe()
            assert not ok and "not followed" in reason
    assert seen == [("/v1/chat/completions", "Bearer secret"), ("/v1/models", "Bearer secret")]
    # Within the same scheme, host and port a redirect is followed.
    with redirecting() as (url, seen):
        async with remote(url, api_key="secret") as handle:
            assert await handle.list_models() == ["moved-model"]
    assert seen == [("/v1/models", "Bearer secret"), ("/moved/v1/models", "Bearer secret")]


async def test_remote_killed_mid_stream_raises(tmp_path: Path, default_model: Path) -> None:
    server = LlamaServer(tmp_path, default_model)
    try:
        async with remote(server.base_url, "m") as handle:
            async def read() -> int:
                seen = 0
                async with contextlib.aclosing(handle.run("completion", COUNTING)) as messages:
                    async for message in messages:
                        assert message["type"] == "chunk", "the stream must not end normally"
                        seen += 1
                        if seen == 3:
                            server.kill()
                return seen

            with pytest.raises(WorkerCrashed, match="mid-stream|before it was complete"):
                await asyncio.wait_for(read(), 20)
            assert handle.in_flight == 0
    finally:
        server.kill()
