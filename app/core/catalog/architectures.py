"""Which model architectures the installed llama.cpp can load, known without loading a model.

llama.cpp loads a GGUF only if its `general.architecture` is a name in its LLM_ARCH_NAMES table ("unknown model
architecture" otherwise). That table is not in llama.h, and the library's read-only data holds its names among
thousands of other strings with nothing to tell them apart. But libllama exports `llm_arch_name(llm_arch)`, the
function llama.cpp itself names an architecture with: called for every value of the enum up to LLM_ARCH_UNKNOWN
(named "(unknown)"), it gives exactly the names this build accepts, whichever build is installed, with no list of
our own to keep up to date. It is read in a child process, once per server process: llama.cpp is never loaded into
the server, and a missing or broken library, or one without that symbol (another C++ ABI, a renamed function),
only means that nothing is flagged; loading such a model then says why it fails.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import json
import logging
import os
import subprocess
import sys

log = logging.getLogger(__name__)

# llm_arch_name(llm_arch) under the Itanium C++ ABI (Linux, macOS); an enum argument is passed as an int.
_ARCH_NAME_SYMBOL = "_Z13llm_arch_name8llm_arch"
_UNKNOWN = b"(unknown)"  # LLM_ARCH_UNKNOWN, the enum's last value
_NO_NAME = b"unknown"  # what llm_arch_name answers for a value missing from the table
_MAX_VALUES = 4096  # a bound, should a build never answer "(unknown)"


@functools.cache
def llama_version() -> str:
    """The installed llama-cpp-python's version: which llama.cpp a model failed to load with."""
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def known_architectures() -> frozenset[str] | None:
    """The architecture names the installed llama.cpp accepts; None when they cannot be read."""
    try:
        done = subprocess.run([sys.executable, "-m", __name__], capture_output=True, timeout=60, check=True)
        names = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("cannot read which architectures llama.cpp knows; none is flagged: %s", exc)
        return None
    return frozenset(names) or None


def load_refusal(architecture: str | None) -> str | None:
    """Why the installed llama.cpp would refuse a model of this architecture, or None when it may load it."""
    known = known_architectures()
    if known is None or architecture in known:
        return None
    if not architecture:
        return f"llama.cpp (llama-cpp-python {llama_version()}) cannot load a model that names no architecture"
    return f"llama.cpp (llama-cpp-python {llama_version()}) cannot load architecture '{architecture}'"


def _library() -> ctypes.CDLL:
    """The libllama that llama-cpp-python loads (LLAMA_CPP_LIB_PATH, else the lib/ folder of its package), found
    without importing it."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise OSError("llama-cpp-python is not installed")
    folder = os.environ.get("LLAMA_CPP_LIB_PATH") or os.path.join(os.path.dirname(spec.origin), "lib")
    for name in ("libllama.so", "libllama.dylib"):
        if os.path.exists(os.path.join(folder, name)):
            return ctypes.CDLL(os.path.join(folder, name))
    raise OSError(f"no libllama in {folder}")


def _read_names() -> list[str]:
    arch_name = getattr(_library(), _ARCH_NAME_SYMBOL)
    arch_name.restype = ctypes.c_char_p
    arch_name.argtypes = [ctypes.c_int]
    names = []
    for value in range(_MAX_VALUES):
        name = arch_name(value)
        if name == _UNKNOWN:
            break
        if name and name != _NO_NAME:
            names.append(name.decode())
    return names


if __name__ == "__main__":
    print(json.dumps(_read_names()))
