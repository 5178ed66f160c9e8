"""What the server and router add to a request, against calling a model worker directly.

A real `switchboard serve` (default model loaded) and, in this process, a worker of the same model. The same
one-token completion (its prompt cached, so the model's own time is small and steady) is timed in
alternating blocks of 50 through each path: the server over HTTP/1.1 keep-alive, and the worker through its handle. The difference of
the medians is the time spent in HTTP, validation, routing and bookkeeping.

Target: p50 overhead <= 1 ms.

    python -m bench overhead
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench import save_results

ROUNDS = int(os.environ.get("SWITCHBOARD_BENCH_ROUNDS", "300"))
WARMUP = 20
BLOCK = 50
TARGET_MS = 1.0
PARAMS = {"prompt": "The capital of France is", "max_tokens": 1, "temperature": 0}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> bool:
    from app.core.runtime.local.handle import LoadSpec, WorkerHandle
    from tests.support.models import find_default_model
    from tests.support.servers import start_server

    model = find_default_model()
    with tempfile.TemporaryDirectory(prefix="sb-overhead-") as tmp:
        served = start_server(Path(tmp))
        loop = asyncio.new_event_loop()
        handle = WorkerHandle("direct", LoadSpec(model_path=str(model), n_ctx=4096, prompt_cache_bytes=0))
        try:
            loop.run_until_complete(handle.start(120))
            connection = http.client.HTTPConnection("127.0.0.1", served.port)
            body = json.dumps({"model": "smollm2-135m-instruct:q4_1", **PARAMS})
            headers = {"content-type": "application/json"}

            def through_server() -> float:
                started = time.perf_counter()
                connection.request("POST", "/v1/completions", body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                elapsed = time.perf_counter() - started
                assert response.status == 200, payload
                return elapsed

            async def direct_once() -> float:
                started = time.perf_counter()
                async for message in handle.run("completion", PARAMS):
                    if message["type"] == "done":
                        break
                return time.perf_counter() - started

            for _ in range(WARMUP):
                through_server(), loop.run_until_complete(direct_once())
            server_s: list[float] = []
            direct_s: list[float] = []
            # Alternate in blocks, not request by request: switching paths every request makes each path pay
            # for waking the other's idle processes, which is the machine's cost, not the server's.
            for _ in range(ROUNDS // BLOCK):
                direct_s += [loop.run_until_complete(direct_once()) for _ in range(BLOCK)]
                server_s += [through_server() for _ in range(BLOCK)]
            connection.close()
        finally:
            loop.run_until_complete(handle.stop())
            loop.close()
            served.stop()
    p50_server, p50_direct = statistics.median(server_s), statistics.median(direct_s)
    overhead_p50 = (p50_server - p50_direct) * 1000
    overhead_p99 = (_percentile(server_s, 0.99) - _percentile(direct_s, 0.99)) * 1000
    met = overhead_p50 <= TARGET_MS
    table = "\n".join([
        "| path | p50 (ms) | p99 (ms) |",
        "|---|---:|---:|",
        f"| worker directly | {p50_direct * 1000:.2f} | {_percentile(direct_s, 0.99) * 1000:.2f} |",
        f"| through the server (HTTP, routing, bookkeeping) | {p50_server * 1000:.2f} | "
        f"{_percentile(server_s, 0.99) * 1000:.2f} |",
        f"| **overhead** | **{overhead_p50:.2f}** | {overhead_p99:.2f} |",
    ])
    verdict = f"target p50 overhead <= {TARGET_MS} ms: {'met' if met else 'missed'}"
    print(table)
    print(verdict)
    save_results(
        "overhead",
        f"# Server overhead benchmark\n\n`python -m bench overhead`, {time.strftime('%Y-%m-%d')}, {ROUNDS} "
        f"rounds (alternating blocks of {BLOCK}) of a one-token completion, {os.cpu_count()} CPUs\n\n{table}\n\n{verdict}",
        {"rounds": ROUNDS, "direct_p50_ms": p50_direct * 1000, "server_p50_ms": p50_server * 1000,
         "overhead_p50_ms": overhead_p50, "overhead_p99_ms": overhead_p99, "target_ms": TARGET_MS, "met": met},
    )
    return met
