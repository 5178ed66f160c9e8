"""Security defaults and failure handling of a real `switchboard serve`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.support.servers import start_server

pytestmark = pytest.mark.slow
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def test_refuses_to_listen_beyond_loopback_without_a_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--host", "0.0.0.0", "--no-discovery"],
        env={"SWITCHBOARD_HOME": str(tmp_path), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "without an API key" in result.stderr


def test_api_key_is_required_when_set(tmp_path: Path) -> None:
    served = start_server(tmp_path, env={"SWITCHBOARD_API_KEY": "s3cret-key"})
    try:
        url = f"{served.base_url}/v1/models"
        response = httpx.get(url)
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
        assert httpx.get(url, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url, headers={"authorization": "Bearer s3cret-key"}).status_code == 200
        assert httpx.get(f"{served.base_url}/health").status_code == 200, "liveness stays open"
        client = openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="s3cret-key", max_retries=0)
        assert client.models.list().data
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="nope", max_retries=0).models.list()
    finally:
        served.stop()


def test_configured_cors_origin_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "sbhome" / "config").mkdir(parents=True)
    (tmp_path / "sbhome" / "config" / "config.json").write_text('{"cors_origins": ["http://app.example"]}')
    served = start_server(tmp_path)
    try:
        allowed = httpx.get(f"{served.base_url}/v1/models", headers={"origin": "http://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "http://app.example"
        other = httpx.get(f"{served.base_url}/v1/models", headers={"origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        served.stop()


def _workers(server_pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(server_pid).children(recursive=True)
            if "app.core.runtime.local.process" in " ".join(p.cmdline())]


def test_worker_killed_mid_stream(tmp_path: Path) -> None:
    served = start_server(tmp_path)
    try:
        client = openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="x", max_retries=0, timeout=60)
        stream = client.completions.create(model="auto", prompt="1, 2, 3, 4, 5, 6,", max_tokens=2000,
                                           temperature=0, stream=True)
        chunks = iter(stream)
        next(chunks)
        [worker] = _workers(served.process.pid)
        worker.kill()
        with pytest.raises(openai.APIError) as info:
            for _ in chunks:
                pass
        assert "signal 9" in str(info.value)
        # The next request gets a new worker.
        answer = client.chat.completions.create(
            model="auto", temperature=0, max_tokens=16,
            messages=[SYSTEM, {"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in answer.choices[0].message.content
        assert [p.pid for p in _workers(served.process.pid)] != [worker.pid]
    finally:
        served.stop()


def test_worker_killed_mid_batch_ends_every_stream(tmp_path: Path) -> None:
    served = start_server(tmp_path, env={"SWITCHBOARD_PARALLEL": "3"})
    try:
        client = openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="x", max_retries=0, timeout=60)
        streams = [iter(client.completions.create(model="auto", prompt=f"{n}, {n + 1}, {n + 2},", max_tokens=2000,
                                                  temperature=0, stream=True)) for n in (1, 10, 100)]
        for stream in streams:
            next(stream)  # all three are being decoded together now
        [worker] = _workers(served.process.pid)
        worker.kill()
        for stream in streams:
            with pytest.raises(openai.APIError, match="signal 9"):
                for _ in stream:
                    pass
        answer = client.chat.completions.create(
            model="auto", temperature=0, max_tokens=16,
            messages=[SYSTEM, {"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in answer.choices[0].message.content
    finally:
        served.stop()


def test_client_disconnect_cancels_generation(tmp_path: Path) -> None:
    # One slot: an answer at once to the next request proves the first one was stopped.
    served = start_server(tmp_path, env={"SWITCHBOARD_PARALLEL": "1"})
    try:
        body = {"model": "auto", "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 3000, "temperature": 0,
                "stream": True}
        with httpx.stream("POST", f"{served.base_url}/v1/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
        # The worker was told to stop: the next request is answered at once, not after 3000 tokens.
        response = httpx.post(f"{served.base_url}/v1/completions", timeout=20,
                              json={"model": "auto", "prompt": "Hello", "max_tokens": 2})
        assert response.status_code == 200
    finally:
        served.stop()


def test_client_disconnect_cancels_a_non_streamed_generation(tmp_path: Path) -> None:
    served = start_server(tmp_path, env={"SWITCHBOARD_PARALLEL": "1"})
    try:
        body = {"model": "auto", "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 3000, "temperature": 0}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{served.base_url}/v1/completions", json=body, timeout=2)
        # Had the worker gone on, this would wait behind ~3000 tokens (tens of seconds on this machine).
        response = httpx.post(f"{served.base_url}/v1/completions", timeout=20,
                              json={"model": "auto", "prompt": "Hello", "max_tokens": 2})
        assert response.status_code == 200
        decisions = httpx.get(f"{served.base_url}/api/decisions").json()["data"]
        assert [d["status"] for d in decisions[:2]] == [200, 499]
    finally:
        served.stop()
