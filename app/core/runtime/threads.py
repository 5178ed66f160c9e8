"""How the CPU's cores are shared among local workers (the pool applies it whenever a worker starts or ends)."""

from __future__ import annotations

import os


def thread_share(cores: int, workers: int, configured: int | None = None) -> tuple[int, int]:
    """(generation, prompt) threads for each of `workers` local worker processes on `cores` CPUs.

    Together they never ask for more threads than there are cores: ggml's threads spin while they wait for each
    other, so two busy workers that each take every core ran 1.7-3.9x slower per request than with their share
    (`python -m bench threads`, 2 cores). One worker alone takes every core for both, as llama-server does:
    with llama-cpp-python's default of half of 2 cores to generate, the default model decoded 52 tok/s, not 86.
    A configured count is used as given, for both."""
    if configured:
        return configured, configured
    per_worker = max(1, cores // max(workers, 1))
    return per_worker, per_worker


def cpu_cores() -> int:
    """The CPUs this process may run on (a container or taskset may allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1
