"""Scoped API keys, the Host allowlist and the head-size bound of a real `switchboard serve`, with real clients."""

from __future__ import annotations

import json
import select
import socket
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.servers import Served, start_server

CHAT = [{"role": "user", "content": "Say hi."}]


def _error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


def _client(served: Served, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.base_url}/v1", api_key=key, max_retries=0, timeout=60)


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _create(served: Served, body: dict[str, object], admin: str | None = None) -> str:
    response = httpx.post(f"{served.base_url}/api/keys", json=body, headers=_bearer(admin) if admin else {})
    assert response.status_code == 200, response.text
    return str(response.json()["secret"])


def test_scoped_keys_end_to_end(tmp_path: Path) -> None:
    served = start_server(tmp_path)
    try:
        url = served.base_url
        # No key exists yet: the server is open, and the first key can be made without one.
        admin = _create(served, {"name": "ops", "scope": "admin"})
        assert _error(httpx.get(f"{url}/api/keys"), 401)["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/health").status_code == 200, "liveness stays open"
        app_key = _create(served, {"name": "app", "scope": "inference"}, admin)
        listed = httpx.get(f"{url}/api/keys", headers=_bearer(admin)).json()["data"]
        assert [(k["name"], k["scope"]) for k in listed] == [("app", "inference"), ("ops", "admin")]
        assert "secret" not in json.dumps(listed) and app_key not in json.dumps(listed)

        # The inference key chats (Bearer or x-api-key) but may not manage.
        inference = _client(served, app_key)
        assert inference.chat.completions.create(model="auto", messages=CHAT, max_tokens=4).choices
        assert httpx.get(f"{url}/v1/models", headers={"x-api-key": app_key}).status_code == 200
        for path in ("/api/models", "/metrics", "/api/keys"):
            error = _error(httpx.get(f"{url}{path}", headers=_bearer(app_key)), 403)
            assert error["code"] == "insufficient_scope" and "'app'" in str(error["message"])

        # The admin key does both.
        assert _client(served, admin).chat.completions.create(model="auto", messages=CHAT, max_tokens=4).choices
        assert httpx.get(f"{url}/api/models", headers=_bearer(admin)).status_code == 200
        assert httpx.get(f"{url}/metrics", headers=_bearer(admin)).status_code == 200
        assert _error(httpx.get(f"{url}/v1/models", headers=_bearer("sb-not-a-key")), 401)

        # Quotas count against the key's name.
        usage = httpx.get(f"{url}/api/quota", headers=_bearer(admin)).json()
        assert usage["key:app"]["requests"] == 1 and usage["key:ops"]["requests"] == 1

        # Revoked: refused from the next request on.
        assert httpx.delete(f"{url}/api/keys/app", headers=_bearer(admin)).json() == {"name": "app", "revoked": True}
        with pytest.raises(openai.AuthenticationError):
            inference.chat.completions.create(model="auto", messages=CHAT, max_tokens=4)
        assert _error(httpx.delete(f"{url}/api/keys/app", headers=_bearer(admin)), 404)["code"] == "key_not_found"
        assert _error(httpx.post(f"{url}/api/keys", json={"name": "ops"}, headers=_bearer(admin)), 400)

        decisions = httpx.get(f"{url}/api/decisions", headers=_bearer(admin)).text
    finally:
        served.stop()
    log = (tmp_path / f"server-{served.port}.log").read_text()
    for secret in (admin, app_key):
        assert secret not in decisions and secret not in log


def test_a_used_up_key_quota_is_429_with_retry_after(tmp_path: Path) -> None:
    served = start_server(tmp_path)
    try:
        admin = _create(served, {"name": "ops", "scope": "admin"})
        metered = _create(served, {"name": "metered", "requests_per_hour": 1}, admin)
        client = _client(served, metered)
        assert client.chat.completions.create(model="auto", messages=CHAT, max_tokens=4).choices
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="auto", messages=CHAT, max_tokens=4)
        assert int(info.value.response.headers["retry-after"]) >= 1
        assert info.value.response.json()["error"]["code"] == "quota_exceeded"
        model_id = client.models.list().data[0].id
        with pytest.raises(openai.RateLimitError) as named:
            client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=4)
        assert "the API key 'metered'" in named.value.response.json()["error"]["message"]
        # Only that key is held back.
        assert _client(served, admin).chat.completions.create(model="auto", messages=CHAT, max_tokens=4).choices
    finally:
        served.stop()


def test_listening_beyond_loopback_needs_an_admin_key(tmp_path: Path) -> None:
    served = start_server(tmp_path)
    try:
        admin = _create(served, {"name": "ops", "scope": "admin"})
        _create(served, {"name": "app"}, admin)
    finally:
        served.stop()
    exposed = start_server(tmp_path, "--host", "0.0.0.0")  # the stored admin key guards it
    try:
        assert _error(httpx.get(f"{exposed.base_url}/api/models"), 401)
        assert httpx.get(f"{exposed.base_url}/api/models", headers=_bearer(admin)).status_code == 200
        assert httpx.delete(f"{exposed.base_url}/api/keys/ops", headers=_bearer(admin)).status_code == 200
    finally:
        exposed.stop()
    # Only an inference key is left: it cannot guard /api, so the server refuses to listen on every interface.
    with pytest.raises(RuntimeError, match="without an API key"):
        start_server(tmp_path, "--host", "0.0.0.0")
    configured = start_server(tmp_path, "--host", "0.0.0.0", env={"SWITCHBOARD_API_KEY": "configured-admin"})
    try:
        assert httpx.get(f"{configured.base_url}/api/keys", headers={"x-api-key": "configured-admin"}).status_code == 200
    finally:
        configured.stop()


@pytest.mark.parametrize(("host", "status"), [
    ("127.0.0.1.evil.example", 403), ("localhost.evil.example", 403), ("127.1", 403), ("0x7f.1", 403),
    ("", 403), ("[::ffff:127.0.0.1]", 200), ("localhost.", 200), ("LOCALHOST:8642", 200), ("127.3.2.1:1", 200),
])
def test_host_header_forms(server: Served, host: str, status: int) -> None:
    response = httpx.get(f"{server.base_url}/v1/models", headers={"host": host})
    if status == 403:
        assert _error(response, 403)["code"] == "host_not_allowed"
    else:
        assert response.status_code == 200


def _raw(server: Served, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def test_http_1_0_without_a_host_header_is_served(server: Served) -> None:
    answer = _raw(server, b"GET /v1/models HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and b'"object":"list"' in answer


def test_a_head_over_64_kib_is_431(server: Served) -> None:
    url = f"{server.base_url}/v1/models"
    assert httpx.get(url, headers={"x-filler": "a" * 60_000}).status_code == 200
    error = _error(httpx.get(url, headers={"x-filler": "a" * 70_000}), 431)
    assert error["code"] == "headers_too_large" and error["type"] == "invalid_request_error"
    many = {f"x-h{i}": "b" * 1000 for i in range(70)}  # many headers count together
    assert _error(httpx.get(url, headers=many), 431)
    # The request line and the headers count together.
    assert httpx.get(url + "?q=" + "c" * 40_000).status_code == 200
    assert _error(httpx.get(url + "?q=" + "c" * 40_000, headers={"x-filler": "a" * 30_000}), 431)
    assert httpx.get(url).status_code == 200, "the connection pool and the server are fine"


@pytest.mark.parametrize("after_a_request", [False, True])
def test_a_huge_head_is_refused_before_it_is_read(server: Served, after_a_request: bool) -> None:
    """httptools alone would buffer it all; the server answers 431 and closes once the head is surely too long
    (also for a later request on a kept-alive connection)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        if after_a_request:
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: localhost\r\nx-filler: ")
        sent = 0
        # Send on until the server answers (at most 1 MiB); waiting after each chunk past the limit keeps the
        # server from closing with unread data (which would reset the connection and lose its answer).
        while sent < 2**20 and not select.select([sock], [], [], 2 if sent >= 64 * 1024 else 0)[0]:
            sock.sendall(b"a" * 32768)
            sent += 32768
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert sent < 2**20
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and b"connection: close" in head
    assert json.loads(body)["error"]["code"] == "headers_too_large"
    assert httpx.get(f"{server.base_url}/health").status_code == 200
