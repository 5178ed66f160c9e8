"""The peer servers the concurrency benchmark compares against: llama.cpp's `llama-server`, found or built.

    python -m bench.peers      # (make bench-peers) build llama-server into PEERS, unless it is there

It is built with cmake from the llama.cpp sources vendored in the source distribution of the installed
llama-cpp-python, so it runs the same llama.cpp as our workers, compiled the same way (for this CPU). Nothing of it
lands in the repository: the source and the build live in ~/.cache/switchboard/peers/.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

PEERS = Path.home() / ".cache" / "switchboard" / "peers"
# Only what the server needs: a static binary, no web UI fetched at build time, no HTTPS.
CMAKE_OPTIONS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_SERVER=ON",
                 "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
                 "-DLLAMA_OPENSSL=OFF")


def _version() -> str:
    return importlib.metadata.version("llama-cpp-python")


def built_server() -> Path:
    """Where `python -m bench.peers` puts llama-server for the installed llama-cpp-python."""
    return PEERS / f"llama.cpp-{_version()}" / "build" / "bin" / "llama-server"


def find_llama_server() -> Path | None:
    """LLAMA_SERVER, else llama-server on PATH, else the one built here; None when there is none (or LLAMA_SERVER
    names no file)."""
    if named := os.environ.get("LLAMA_SERVER"):
        return Path(named) if Path(named).is_file() else None
    if on_path := shutil.which("llama-server"):
        return Path(on_path)
    built = built_server()
    return built if built.exists() else None


def build(jobs: int = 2) -> Path:
    version = _version()
    binary = built_server()
    if binary.exists():
        return binary
    PEERS.mkdir(parents=True, exist_ok=True)
    sdist = PEERS / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-d",
                        str(PEERS), f"llama-cpp-python=={version}"], check=True)
    source = PEERS / f"llama.cpp-{version}"
    if not (source / "CMakeLists.txt").exists():
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for member in members:
                member.name = member.name.removeprefix(prefix)
            tar.extractall(source, members=members, filter="data")
    subprocess.run(["cmake", "-S", str(source), "-B", str(source / "build"), *CMAKE_OPTIONS], check=True)
    subprocess.run(["cmake", "--build", str(source / "build"), "--target", "llama-server", f"-j{jobs}"], check=True)
    return binary


if __name__ == "__main__":
    print(build())
