"""Overload: 64 clients at once against one model, with the queue bounded (max_queue 8, the default 64) and, as
before issue 9, unbounded.

A real `switchboard serve` on the default model per setting; each client sends its requests one after another
(8-token answers, not streamed). Reported: how many got 200 and 429 (nothing else may come back, and every request
must get one of them), the wall time, and the latency of the answered ones. A bounded queue trades some requests
for a 429 at once (with Retry-After) against a bounded wait for everyone admitted.

Target: every request answered 200 or 429, none lost, in every setting.

    python -m bench overload
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench import save_results

CLIENTS = 64
REQUESTS = int(os.environ.get("SWITCHBOARD_BENCH_OVERLOAD_REQUESTS", "10"))
SETTINGS = (("8", "8"), ("64 (default)", "64"), ("unbounded (before)", "1000000"))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _storm(base_url: str, model_id: str) -> tuple[Counter[int], list[float], float]:
    statuses: Counter[int] = Counter()
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient, index: int) -> None:
        for turn in range(REQUESTS):
            body = {"model": model_id, "max_tokens": 8, "temperature": 0,
                    "messages": [{"role": "user", "content": f"Say a word about the number {index * 100 + turn}."}]}
            started = time.perf_counter()
            response = await http.post("/v1/chat/completions", json=body)
            statuses[response.status_code] += 1
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=httpx.Limits(max_connections=CLIENTS)) as http:
        await asyncio.gather(*(client(http, i) for i in range(CLIENTS)))
    return statuses, latencies, time.perf_counter() - started


def main() -> bool:
    from tests.support.servers import start_server

    rows = []
    for label, max_queue in SETTINGS:
        with tempfile.TemporaryDirectory() as tmp:
            served = start_server(Path(tmp), env={"SWITCHBOARD_MAX_QUEUE": max_queue})
            try:
                model_id = httpx.get(f"{served.base_url}/v1/models").json()["data"][0]["id"]
                httpx.post(f"{served.base_url}/v1/chat/completions", timeout=120,
                           json={"model": model_id, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]})
                statuses, latencies, wall = asyncio.run(_storm(served.base_url, model_id))
            finally:
                served.stop()
        rows.append({"max_queue": label, "statuses": dict(statuses), "wall_s": wall,
                     "p50_s": statistics.median(latencies) if latencies else float("nan"),
                     "p99_s": _percentile(latencies, 0.99), "max_s": max(latencies, default=float("nan"))})
        print(rows[-1], flush=True)

    total = CLIENTS * REQUESTS
    ok = all(sum(r["statuses"].values()) == total and set(r["statuses"]) <= {200, 429} for r in rows)
    lines = [f"{CLIENTS} clients × {REQUESTS} requests each, 8-token answers, default model, one worker "
             "(`python -m bench overload`).", "",
             "| max_queue | 200 | 429 | wall | latency p50 (answered) | p99 | max |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['max_queue']} | {r['statuses'].get(200, 0)} | {r['statuses'].get(429, 0)} | "
                     f"{r['wall_s']:.1f} s | {r['p50_s']:.2f} s | {r['p99_s']:.2f} s | {r['max_s']:.2f} s |")
    lines += ["", f"Every request answered 200 or 429, none lost: {'yes' if ok else 'NO'}."]
    save_results("overload", "\n".join(lines), {"clients": CLIENTS, "requests": REQUESTS, "rows": rows, "ok": ok})
    return ok
