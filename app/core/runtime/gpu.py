"""NVIDIA GPU memory through NVML (the `pynvml` module of nvidia-ml-py). Without a GPU or driver: None."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

_lock = threading.Lock()
_state: dict[str, object] = {"ready": None, "error": None}


@dataclass(frozen=True, slots=True)
class GpuMemory:
    index: int
    name: str
    total_bytes: int
    used_bytes: int


def _init() -> bool:
    """Initialise NVML once; remember a failure so machines without NVIDIA don't pay for it again."""
    with _lock:
        if _state["ready"] is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                _state["ready"] = True
            except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError...
                _state["ready"], _state["error"] = False, f"{type(exc).__name__}: {exc}"
        return bool(_state["ready"])


def unavailable_reason() -> str | None:
    """Why there is no GPU information, in words for the window; None when NVML works."""
    return None if _init() else f"No NVIDIA GPU or driver found ({_state['error']})"


def devices() -> list[GpuMemory] | None:
    if not _init():
        return None
    import pynvml

    found = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        found.append(GpuMemory(index, name.decode() if isinstance(name, bytes) else name, int(info.total),
                               int(info.used)))
    return found


def process_memory(pids: Iterable[int]) -> dict[int, int]:
    """VRAM used by each of `pids` on any GPU (empty without NVML)."""
    wanted = set(pids)
    if not wanted or not _init():
        return {}
    import pynvml

    used: dict[int, int] = {}
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid in wanted and proc.usedGpuMemory:
                used[proc.pid] = used.get(proc.pid, 0) + int(proc.usedGpuMemory)
    return used


def offload_supported() -> bool:
    """Whether this llama.cpp build can put layers on a GPU (a CPU-only wheel cannot, even beside an NVIDIA card).

    Asked only once a GPU was found, so machines without one never load llama.cpp in the server process."""
    with _lock:
        if "offload" not in _state:
            try:
                import llama_cpp

                _state["offload"] = bool(llama_cpp.llama_supports_gpu_offload())
            except Exception:  # no usable library: the workers will say so when they load
                _state["offload"] = False
        return bool(_state["offload"])
