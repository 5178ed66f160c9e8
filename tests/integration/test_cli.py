"""The `switchboard` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"SWITCHBOARD_HOME": str(tmp_path / "sb"), "HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "app", *args], env=env, capture_output=True, text=True, timeout=60)


def test_scan_paths_json_lists_models_and_problems(tmp_path: Path, default_model: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "smol.Q4_1.gguf").symlink_to(default_model)
    (folder / "notes.gguf").write_text("not a model")
    result = run(tmp_path, "scan", "--json", str(folder))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [model] = report["models"]
    assert (model["id"], model["architecture"], model["quantization"]) == ("smol:q4_1", "llama", "Q4_1")
    [problem] = report["problems"]
    assert problem["path"].endswith("notes.gguf") and "GGUF" in problem["reason"]


def test_scan_table_shows_the_embedded_model(tmp_path: Path) -> None:
    result = run(tmp_path, "scan")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:3] == ["ID", "SOURCE", "PATH"]
    assert any(row.startswith("smollm2-135m-instruct:q4_1") and "embedded" in row for row in rows)


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "sb" / "config").mkdir(parents=True)
    (tmp_path / "sb" / "config" / "config.json").write_text('{"port": 1, "colour": "blue"}')
    result = run(tmp_path, "serve")
    assert result.returncode == 2 and "unknown setting(s) colour" in result.stderr


def test_route_explain_without_a_server_uses_the_saved_state(tmp_path: Path) -> None:
    result = run(tmp_path, "route", "--json", "--url", "http://127.0.0.1:9", "What is the capital of France?")
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision["model_id"] == "smollm2-135m-instruct:q4_1"
    assert decision["candidates"][0]["filtered"] is False
    missing = run(tmp_path, "route", "--url", "http://127.0.0.1:9", "--capability", "vision", "Describe this")
    assert missing.returncode == 1 and "vision" in missing.stderr


def test_route_explain_asks_the_running_server(tmp_path: Path) -> None:
    from tests.support.servers import start_server

    served = start_server(tmp_path)
    try:
        result = run(tmp_path, "route", "--explain", "--url", served.base_url, "Hello")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("smollm2-135m-instruct:q4_1  (least_loaded")
        assert f"server at {served.base_url}" in result.stdout
    finally:
        served.stop()


def test_listening_socket_is_tcp_so_connections_get_nodelay() -> None:
    import socket

    from app.core.config import Config
    from app.server.run import bind

    sock = bind(Config(port=0))
    try:
        # asyncio sets TCP_NODELAY on accepted connections only for sockets whose proto is TCP.
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
