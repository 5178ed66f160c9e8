"""Two busy workers: llama.cpp's default threads against the pool's share of the cores.

Two real workers of the default model serve the same completion (a ~170-token prompt, 16 tokens out, no prompt
cache) at the same time, in alternating blocks: once with llama.cpp's defaults in each (half the cores to
generate, every core to read the prompt, so together they ask for more threads than there are cores), once with
the share the pool gives each of two workers (`threads.thread_share`). Reported: mean seconds per request.

    python -m bench threads
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

from bench import save_results

BLOCKS = 3
PER_BLOCK = 4
PARAMS = {"prompt": "You are a helpful travel assistant. " * 20 + "Plan three days in Rome.", "max_tokens": 16,
          "temperature": 0}


async def _measure() -> dict[str, list[float]]:
    from app.core.runtime.local.handle import LoadSpec, WorkerHandle
    from app.core.runtime.threads import cpu_cores, thread_share
    from tests.support.models import find_default_model

    spec = LoadSpec(model_path=str(find_default_model()), n_ctx=2048, prompt_cache_bytes=0)
    workers = [WorkerHandle("bench", spec, replica=i) for i in range(2)]
    await asyncio.gather(*(w.start(120) for w in workers))
    cpus = os.cpu_count() or 1
    # llama-cpp-python's defaults (what a worker uses unless told otherwise), and the pool's share.
    settings = {"llama.cpp defaults": (max(cpus // 2, 1), cpus),
                "shared by the pool": thread_share(cpu_cores(), len(workers))}
    times: dict[str, list[float]] = {name: [] for name in settings}

    async def serve(worker: WorkerHandle) -> list[float]:
        out = []
        for _ in range(PER_BLOCK):
            started = time.perf_counter()
            async for _message in worker.run("completion", PARAMS):
                pass
            out.append(time.perf_counter() - started)
        return out

    try:
        for _ in range(BLOCKS):
            for name, threads in settings.items():
                for w in workers:
                    w.threads = threads
                for block in await asyncio.gather(*(serve(w) for w in workers)):
                    times[name] += block
    finally:
        await asyncio.gather(*(w.stop() for w in workers))
    return times


def main() -> bool:
    from app.core.runtime.threads import cpu_cores

    times = asyncio.run(_measure())
    means = {name: statistics.fmean(values) for name, values in times.items()}
    default, shared = means["llama.cpp defaults"], means["shared by the pool"]
    table = "\n".join([
        "| threads in each of 2 busy workers | requests | mean s / request |",
        "|---|---:|---:|",
        *(f"| {name} | {len(times[name])} | {means[name]:.2f} |" for name in times),
        f"| **defaults / shared** | | **{default / shared:.1f}x** |",
    ])
    print(table)
    save_results("threads", f"# Threads of busy workers\n\n`python -m bench threads`, {time.strftime('%Y-%m-%d')}, "
                 f"{cpu_cores()} CPUs\n\n{table}", {"times_s": times, "means_s": means, "cpus": cpu_cores()})
    return shared <= default
