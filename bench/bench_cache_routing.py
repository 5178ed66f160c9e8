"""Cache-aware vs round-robin vs least-loaded on a replay of multi-turn chats, with real llama.cpp workers.

16 conversations x 6 turns share one system prompt and run concurrently (each conversation waits for its
previous answer, as a chat user does). Each worker's prompt cache has room for about 10 of the 16 conversations
(PROMPT_CACHE_BYTES), as a worker of a larger model would. Each strategy gets a fresh engine whose workers are loaded before the
replay starts, over two set-ups: 2 replicas of one model, and 3 models (copies of the default model under
other names). Reported per strategy: prompt-token reuse (tokens the workers took from their caches / prompt
tokens) and mean / p95 time to first token.

Targets: cache-aware reuses >= 3x the tokens round-robin does, with <= 0.7x its mean time to first token.

    python -m bench cache_routing
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import save_results

CONVERSATIONS = int(os.environ.get("SWITCHBOARD_BENCH_CONVERSATIONS", "16"))
TURNS = int(os.environ.get("SWITCHBOARD_BENCH_TURNS", "6"))
MAX_TOKENS = 16
# Each worker's prompt cache holds about 10 of these 16 conversations at full length: models
# larger than the embedded one need ~100x more KV memory per token, so a real worker cannot keep them all.
PROMPT_CACHE_BYTES = 64 * 2**20
STRATEGIES = ("cache_aware", "round_robin", "least_loaded")
SYSTEM = "You are a helpful travel assistant for a small agency. Answer concretely and kindly."
TOPICS = ["Paris", "Rome", "Vienna", "Lisbon", "Prague", "Berlin", "Madrid", "Athens", "Dublin", "Oslo",
          "Zurich", "Krakow", "Porto", "Seville", "Bruges", "Edinburgh"]
FOLLOW_UPS = ["What should I see first?", "Where can I eat well?", "How do I get around?",
              "Is it expensive?", "What about a day trip?", "Any tip for the evening?"]


def _conversation_turn(index: int, turn: int) -> str:
    topic = TOPICS[index % len(TOPICS)]
    return f"I am planning three days in {topic}." if turn == 0 else FOLLOW_UPS[(turn + index) % len(FOLLOW_UPS)]


async def _replay(strategy: str, setup: str, home: Path, default_model: Path) -> dict[str, Any]:
    os.environ["SWITCHBOARD_HOME"] = str(home)
    from app.core.config import Config
    from app.core.engine import Engine
    from app.core.query import translate
    from app.core.router import RouteRequest

    models_dir = home / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    if setup == "3 models":
        for name in ("smol-b", "smol-c"):
            target = models_dir / f"{name}.Q4_1.gguf"
            if not target.exists():
                try:  # a second file with the same bytes: the scan counts each file once
                    os.link(default_model, target)
                except OSError:
                    shutil.copy(default_model, target)
    engine = Engine(Config(discovery=False, model_dirs=[str(models_dir)], n_ctx=4096, idle_ttl_s=3600,
                           prompt_cache_bytes=PROMPT_CACHE_BYTES))
    await engine.rescan()
    named = None
    if setup == "2 replicas":
        named = "smollm2-135m-instruct:q4_1"
        engine.registry.set_options(named, replicas=2)
    engine.configure_router(strategy)
    for entry in engine.registry.list():
        for replica in range(entry.replicas):
            await engine.pool.acquire(entry, replica)
    ttfts: list[float] = []
    prompt_tokens = cached_tokens = 0
    spread: dict[str, int] = {}

    async def conversation(index: int) -> None:
        nonlocal prompt_tokens, cached_tokens
        messages = [{"role": "system", "content": SYSTEM}]
        for turn in range(TURNS):
            messages.append({"role": "user", "content": _conversation_turn(index, turn)})
            body = {"messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}
            request = RouteRequest("chat", named, (), translate("chat", body), session_key=f"conv-{index}",
                                   request_id=f"conv-{index}-turn-{turn}")
            started = time.perf_counter()
            job = await engine.open(request, "chat", {**body, "messages": list(messages)})
            first_at = None
            parts: list[str] = []
            async for message in job.stream():
                if first_at is None:
                    first_at = time.perf_counter()
                if message["type"] == "chunk":
                    parts.append(message["data"]["choices"][0]["delta"].get("content") or "")
                else:
                    prompt_tokens += message["usage"]["prompt_tokens"]
                    cached_tokens += message["usage"]["cached_tokens"]
            ttfts.append((first_at or time.perf_counter()) - started)
            spread[job.decision.key] = spread.get(job.decision.key, 0) + 1
            messages.append({"role": "assistant", "content": "".join(parts)})

    began = time.perf_counter()
    await asyncio.gather(*(conversation(i) for i in range(CONVERSATIONS)))
    wall = time.perf_counter() - began
    await engine.close()
    ttfts.sort()
    return {
        "strategy": strategy,
        "setup": setup,
        "requests": len(ttfts),
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached_tokens,
        "reuse": cached_tokens / prompt_tokens if prompt_tokens else 0.0,
        "ttft_mean_ms": statistics.fmean(ttfts) * 1000,
        "ttft_p95_ms": ttfts[int(0.95 * (len(ttfts) - 1))] * 1000,
        "wall_s": wall,
        "spread": spread,
    }


def main() -> bool:
    from tests.conftest import find_default_model

    default_model = find_default_model()
    previous_home = os.environ.get("SWITCHBOARD_HOME")
    rows: list[dict[str, Any]] = []
    try:
        for setup in ("2 replicas", "3 models"):
            for strategy in STRATEGIES:
                with tempfile.TemporaryDirectory(prefix="sb-bench-") as home:
                    row = asyncio.run(_replay(strategy, setup, Path(home), default_model))
                rows.append(row)
                print(f"  {setup:<11} {strategy:<13} reuse {row['reuse']:6.1%}  ttft mean "
                      f"{row['ttft_mean_ms']:7.1f} ms  p95 {row['ttft_p95_ms']:7.1f} ms  ({row['wall_s']:.1f} s)",
                      flush=True)
    finally:
        if previous_home is None:
            os.environ.pop("SWITCHBOARD_HOME", None)
        else:
            os.environ["SWITCHBOARD_HOME"] = previous_home
    verdicts = []
    lines = ["| set-up | strategy | requests | prompt-token reuse | TTFT mean (ms) | TTFT p95 (ms) | vs round-robin |",
             "|---|---|---:|---:|---:|---:|---|"]
    for setup in ("2 replicas", "3 models"):
        by = {r["strategy"]: r for r in rows if r["setup"] == setup}
        rr = by["round_robin"]
        for strategy in STRATEGIES:
            r = by[strategy]
            reuse_x = r["reuse"] / rr["reuse"] if rr["reuse"] else float("inf")
            ttft_x = r["ttft_mean_ms"] / rr["ttft_mean_ms"]
            note = "" if strategy == "round_robin" else f"reuse {reuse_x:.1f}x, TTFT {ttft_x:.2f}x"
            if strategy == "cache_aware":
                verdicts.append(reuse_x >= 3.0 and ttft_x <= 0.7)
                note += " (targets met)" if verdicts[-1] else " (targets missed)"
            lines.append(f"| {setup} | {strategy} | {r['requests']} | {r['reuse']:.1%} | {r['ttft_mean_ms']:.0f} | "
                         f"{r['ttft_p95_ms']:.0f} | {note} |")
    table = "\n".join(lines)
    print(table)
    header = (f"# Cache-aware routing benchmark\n\n`python -m bench cache_routing`, {time.strftime('%Y-%m-%d')}, "
              f"{CONVERSATIONS} conversations x {TURNS} turns, {MAX_TOKENS} tokens per answer, "
              f"{PROMPT_CACHE_BYTES >> 20} MiB prompt cache per worker, {os.cpu_count()} CPUs\n\n")
    save_results("cache_routing", header + table, rows)
    return all(verdicts)
