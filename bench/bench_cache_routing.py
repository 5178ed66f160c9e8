"""Cache-aware vs round-robin vs least-loaded on a replay of multi-turn chats, with real llama.cpp workers.

16 conversations x 6 turns share one system prompt and run concurrently, each as a chat user does: it starts
at a random moment, waits for each answer, then "thinks" for a random 1-5 s before its next turn (seeded, the
same for every strategy), so requests from different conversations interleave as they would with real users
rather than in lock-step rounds. Each worker's prompt cache holds as many tokens as the default cache of an
8B model's worker does (PROMPT_CACHE_BYTES). Each strategy gets a fresh engine whose workers are
loaded before the replay starts, over two set-ups: 2 replicas of one model, and 3 models (copies of the default
model under other names). Reported per strategy: prompt-token reuse (tokens the workers took from their caches /
prompt tokens), the same beyond the prefix every request shares (system prompt and chat template: what only the
conversation's own earlier turns can give), and mean / p95 time to first token.

Against an oracle, from the same trace: each request's prompt tokens (the model's own template and tokenizer) and
what every earlier request left in a worker (its prompt, and its answer once it ended). "Oracle" is the longest
prefix of a request any worker held when it started, as if the router knew every cache and no cache ever evicted;
"served worker" the same on the worker that served it (what routing gave; the rest of the gap is eviction).

Targets: cache-aware reuses >= 3x the tokens round-robin does, with <= 0.7x its mean time to first token; its
reuse is >= 90% of the oracle's; its mean time to first token is no worse than in the last saved run.

    python -m bench cache_routing
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import RESULTS, save_results

CONVERSATIONS = int(os.environ.get("SWITCHBOARD_BENCH_CONVERSATIONS", "16"))
TURNS = int(os.environ.get("SWITCHBOARD_BENCH_TURNS", "6"))
MAX_TOKENS = 16
START_SPREAD_S = 3.0  # conversations start at a random moment in the first seconds
THINK_S = (1.0, 5.0)  # a user's pause between an answer and their next message
SEED = 7
# The worker's default prompt cache (256 MiB) as it is for an 8B model, in the default model's terms: Llama-3-8B
# keeps 131,072 bytes of KV per token (32 layers x 8 KV heads x 128 x K and V x f16), SmolLM2-135M 23,040 (30 x 3
# x 64 x 2 x 2), so the same cache holds the same number of tokens at 256 MiB x 23,040 / 131,072 = 45 MiB.
PROMPT_CACHE_BYTES = 256 * 2**20 * 23_040 // 131_072
STRATEGIES = ("cache_aware", "round_robin", "least_loaded")
REUSE_TARGET = 3.0  # cache-aware's reuse / round-robin's, at least
TTFT_TARGET = 0.7  # cache-aware's mean TTFT / round-robin's, at most
ORACLE_TARGET = 0.9  # cache-aware's reuse / the oracle's, at least
BEFORE_TARGET = 1.0  # cache-aware's mean TTFT / the last saved run's, at most (the machine is noisy: read both)
SYSTEM = "You are a helpful travel assistant for a small agency. Answer concretely and kindly."
TOPICS = ["Paris", "Rome", "Vienna", "Lisbon", "Prague", "Berlin", "Madrid", "Athens", "Dublin", "Oslo",
          "Zurich", "Krakow", "Porto", "Seville", "Bruges", "Edinburgh"]
FOLLOW_UPS = ["What should I see first?", "Where can I eat well?", "How do I get around?",
              "Is it expensive?", "What about a day trip?", "Any tip for the evening?"]


def _conversation_turn(index: int, turn: int) -> str:
    topic = TOPICS[index % len(TOPICS)]
    return f"I am planning three days in {topic}." if turn == 0 else FOLLOW_UPS[(turn + index) % len(FOLLOW_UPS)]


async def _replay(strategy: str, setup: str, home: Path, default_model: Path, chat: Any) -> dict[str, Any]:
    os.environ["SWITCHBOARD_HOME"] = str(home)
    from app.core.config import Config
    from app.core.engine import Engine
    from app.core.routing.needs import translate
    from app.core.routing.request import RouteRequest

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
    usages: list[tuple[int, int, int]] = []  # (turn, prompt tokens, cached tokens) per request
    spread: dict[str, int] = {}
    trace: list[dict[str, Any]] = []  # per request: when it ran, where, its prompt and answer tokens

    async def conversation(index: int) -> None:
        pauses = random.Random(SEED * 1000 + index)  # the same user behaviour for every strategy
        messages = [{"role": "system", "content": SYSTEM}]
        await asyncio.sleep(pauses.uniform(0.0, START_SPREAD_S))
        for turn in range(TURNS):
            if turn:
                await asyncio.sleep(pauses.uniform(*THINK_S))
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
                    usages.append((turn, message["usage"]["prompt_tokens"], message["usage"]["cached_tokens"]))
            ttfts.append((first_at or time.perf_counter()) - started)
            spread[job.decision.key] = spread.get(job.decision.key, 0) + 1
            answer = "".join(parts)
            trace.append({"start": started, "end": time.perf_counter(), "worker": job.decision.key,
                          "prompt": chat.tokens(messages)[0],
                          "answer": chat.llm.tokenize(answer.encode(), add_bos=False, special=False)})
            messages.append({"role": "assistant", "content": answer})

    began = time.perf_counter()
    await asyncio.gather(*(conversation(i) for i in range(CONVERSATIONS)))
    wall = time.perf_counter() - began
    await engine.close()
    ttfts.sort()
    prompt_tokens = sum(u[1] for u in usages)
    cached_tokens = sum(u[2] for u in usages)
    # The prefix every request shares: what a first turn reuses from a worker that served another conversation.
    shared = statistics.median_low([u[2] for u in usages if u[0] == 0 and u[2] > 0] or [0])
    own = sum(max(u[2] - shared, 0) for u in usages)
    own_prompt = sum(max(u[1] - shared, 0) for u in usages)
    return {
        "strategy": strategy,
        "setup": setup,
        "requests": len(ttfts),
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached_tokens,
        "reuse": cached_tokens / prompt_tokens if prompt_tokens else 0.0,
        "shared_prefix_tokens": shared,
        "reuse_beyond_shared": own / own_prompt if own_prompt else 0.0,
        "ttft_mean_ms": statistics.fmean(ttfts) * 1000,
        "ttft_p95_ms": ttfts[int(0.95 * (len(ttfts) - 1))] * 1000,
        "wall_s": wall,
        "spread": spread,
        **oracle(trace),
    }


def oracle(trace: list[dict[str, Any]]) -> dict[str, float]:
    """Reuse an all-knowing router with endless caches would get, and the part of it the served worker had."""
    from app.core.runtime.local.prompt_cache import common_prefix

    best_any = best_served = total = 0
    for r in trace:
        prompt = r["prompt"]
        held = [(e["worker"], e["prompt"] + e["answer"] if e["end"] <= r["start"] else e["prompt"])
                for e in trace if e is not r and e["start"] < r["start"]]
        # The last prompt token is always evaluated again (its logits start the answer): never reused.
        cap = len(prompt) - 1
        best_any += min(cap, max((common_prefix(tokens, prompt) for _, tokens in held), default=0))
        best_served += min(cap, max((common_prefix(tokens, prompt) for worker, tokens in held
                                     if worker == r["worker"]), default=0))
        total += len(prompt)
    return {"oracle_reuse": best_any / total if total else 0.0,
            "served_worker_reuse": best_served / total if total else 0.0}


def main() -> bool:
    import llama_cpp

    from app.core.runtime.local.batch import ChatPrompt
    from tests.support.models import find_default_model

    default_model = find_default_model()
    chat = ChatPrompt(llama_cpp.Llama(str(default_model), vocab_only=True, verbose=False))
    previous_home = os.environ.get("SWITCHBOARD_HOME")
    rows: list[dict[str, Any]] = []
    try:
        for setup in ("2 replicas", "3 models"):
            for strategy in STRATEGIES:
                with tempfile.TemporaryDirectory(prefix="sb-bench-") as home:
                    row = asyncio.run(_replay(strategy, setup, Path(home), default_model, chat))
                rows.append(row)
                print(f"  {setup:<11} {strategy:<13} reuse {row['reuse']:6.1%} (oracle {row['oracle_reuse']:6.1%}, "
                      f"beyond shared {row['reuse_beyond_shared']:6.1%})  ttft mean "
                      f"{row['ttft_mean_ms']:7.1f} ms  p95 {row['ttft_p95_ms']:7.1f} ms  ({row['wall_s']:.1f} s)",
                      flush=True)
    finally:
        if previous_home is None:
            os.environ.pop("SWITCHBOARD_HOME", None)
        else:
            os.environ["SWITCHBOARD_HOME"] = previous_home
    return report(rows)


def report(rows: list[dict[str, Any]]) -> bool:
    """The table (printed and saved under bench/results/); True when cache-aware met every target in both set-ups."""
    before = _last_saved()
    verdicts = []
    lines = ["| set-up | strategy | requests | prompt-token reuse | oracle's reuse | reuse / oracle | served worker's "
             "reuse | reuse beyond the shared prefix | TTFT mean (ms) | TTFT p95 (ms) | vs round-robin |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for setup in ("2 replicas", "3 models"):
        by = {r["strategy"]: r for r in rows if r["setup"] == setup}
        rr = by["round_robin"]
        for strategy in STRATEGIES:
            r = by[strategy]
            reuse_x = r["reuse"] / rr["reuse"] if rr["reuse"] else float("inf")
            ttft_x = r["ttft_mean_ms"] / rr["ttft_mean_ms"]
            own_x = r["reuse_beyond_shared"] / rr["reuse_beyond_shared"] if rr["reuse_beyond_shared"] else float("inf")
            of_oracle = r["reuse"] / r["oracle_reuse"] if r["oracle_reuse"] else 1.0
            note = "" if strategy == "round_robin" else f"reuse {reuse_x:.1f}x ({own_x:.1f}x beyond), TTFT {ttft_x:.2f}x"
            if strategy == "cache_aware":
                was = before.get((setup, strategy))
                vs_before = r["ttft_mean_ms"] / was if was else None
                met = {"reuse": reuse_x >= REUSE_TARGET, "TTFT": ttft_x <= TTFT_TARGET,
                       "oracle": of_oracle >= ORACLE_TARGET}
                if vs_before is not None:
                    met["TTFT vs last run"] = vs_before <= BEFORE_TARGET
                    note += f"; TTFT {vs_before:.2f}x the last saved run's {was:.0f} ms"
                verdicts += met.values()
                note += " (" + ", ".join(f"{name} target {'met' if ok else 'missed'}" for name, ok in met.items()) + ")"
            lines.append(f"| {setup} | {strategy} | {r['requests']} | {r['reuse']:.1%} | {r['oracle_reuse']:.1%} | "
                         f"{of_oracle:.0%} | {r['served_worker_reuse']:.1%} | {r['reuse_beyond_shared']:.1%} | "
                         f"{r['ttft_mean_ms']:.0f} | {r['ttft_p95_ms']:.0f} | {note} |")
    table = "\n".join(lines)
    print(table)
    header = (f"# Cache-aware routing benchmark\n\n`python -m bench cache_routing`, {time.strftime('%Y-%m-%d')}, "
              f"{CONVERSATIONS} conversations x {TURNS} turns, {MAX_TOKENS} tokens per answer, "
              f"{PROMPT_CACHE_BYTES >> 20} MiB prompt cache per worker, think time {THINK_S[0]:g}-{THINK_S[1]:g} s, "
              f"{os.cpu_count()} CPUs; shared prefix {rows[0]['shared_prefix_tokens']} tokens\n\n")
    save_results("cache_routing", header + table, rows)
    return all(verdicts)


def _last_saved() -> dict[tuple[str, str], float]:
    """Mean TTFT per (set-up, strategy) in the results this run replaces."""
    try:
        rows = json.loads((RESULTS / "cache_routing.json").read_text())
    except (OSError, ValueError):
        return {}
    return {(r["setup"], r["strategy"]): r["ttft_mean_ms"] for r in rows}
