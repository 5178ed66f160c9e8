"""A real `switchboard serve` on loopback, as a subprocess, for the tests and benchmarks that need one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

# `python -m llama_cpp.server ARGS`, loading its model with the parameters this CPU needs (as our worker does).
LLAMA_CPP_SERVER = ("import runpy, sys\n"
                    "from app.core.runtime.local.llama import model_defaults\n"
                    "sys.argv[0] = 'llama_cpp.server'\n"
                    "with model_defaults():\n"
                    "    runpy.run_module('llama_cpp.server', run_name='__main__')\n")


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
