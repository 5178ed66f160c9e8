"""Concurrency: streaming chat with 1 to 16 clients at once, Switchboard against the servers it is compared with.

Each client sends three streamed chats one after another (a story each, 64 tokens at temperature 0, a shared
system prompt, a different story in every request) to the default model. Servers, one after another (never two at
once; every server is first checked to answer "Paris"):

- Switchboard with `parallel` 1 (one job per worker at a time, as before issue 10) and `auto` (4 on the CPU);
- llama-cpp-python's own server (`python -m llama_cpp.server`, its defaults, requests queued not interrupted);
- llama.cpp's `llama-server` with 8 slots of Switchboard's per-request context (`LLAMA_SERVER`, PATH, or
  `make bench-peers`), reported "not found" when there is none.

Each server loads the model as our worker does: flash attention, n_ctx 4096 per request, and extra buffer types
off where our worker turns them off (this CPU's AMX path crashes on the default model). Reported per number of
clients: aggregate completion tokens/s (usage.completion_tokens; llama_cpp.server sends no usage when streaming,
so its content chunks are counted, one token each), time to first token mean and p95, and the p95 gap between
streamed chunks; each as a ratio to llama-server's and to Switchboard `parallel` 1.

Targets (issue 10), Switchboard `auto`: with 8 clients ≥ 0.9x llama-server's tokens/s, ≥ 2.2x `parallel` 1's, mean
time to first token ≤ 1.5x llama-server's; with 1 client ≥ 0.95x llama-server's tokens/s.

    python -m bench concurrency
    SWITCHBOARD_BENCH_CLIENTS=1,8 python -m bench concurrency    # fewer client counts, a quick run
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import save_results

CLIENTS = [int(n) for n in os.environ.get("SWITCHBOARD_BENCH_CLIENTS", "1,2,4,8,16").split(",")]
REQUESTS = 3
MAX_TOKENS = 64
N_CTX = 4096  # Switchboard's default context per request (Config.n_ctx)
SLOTS = 8
SYSTEM = "You are a novelist. Answer with the story only, and make it long."
TOPICS = ("a lighthouse keeper", "a clockmaker's apprentice", "a dragon who collects maps", "a sailor lost at sea",
          "a robot learning to paint", "a village under the snow", "a thief in Venice", "a forgotten orchard",
          "two rival bakers", "a train that never stops", "a girl who talks to owls", "an old violin",
          "a city under the sea", "a knight afraid of horses", "a desert caravan", "a gardener on Mars")
PARIS = [{"role": "system", "content": "You are a helpful assistant."},
         {"role": "user", "content": "What is the capital of France?"}]
SB_AUTO, SB_ONE, SB_EIGHT, LLAMA_CPP, LLAMA_SERVER = (
    "Switchboard auto", "Switchboard parallel 1", "Switchboard parallel 8", "llama_cpp.server", "llama-server -np 8")
# parallel 8 is llama-server's slot count: the like-for-like comparison beside the default.
SERVERS = (SB_ONE, SB_AUTO, SB_EIGHT, LLAMA_CPP, LLAMA_SERVER)
METRICS = (("tokens_per_s", "aggregate completion tokens/s", "{:.1f}"), ("ttft_mean_s", "time to first token, "
           "mean (s)", "{:.3f}"), ("ttft_p95_s", "time to first token, p95 (s)", "{:.3f}"),
           ("itl_p95_s", "gap between streamed chunks, p95 (s)", "{:.3f}"))


@dataclass
class Level:
    """One server under `clients` concurrent clients."""

    clients: int
    wall_s: float
    completion_tokens: int
    ttft_s: list[float] = field(default_factory=list)
    gaps_s: list[float] = field(default_factory=list)
    finish_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def figures(self) -> dict[str, float]:
        return {"tokens_per_s": self.completion_tokens / self.wall_s, "ttft_mean_s": statistics.fmean(self.ttft_s),
                "ttft_p95_s": _p95(self.ttft_s), "itl_p95_s": _p95(self.gaps_s)}


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan")


# -- one streamed chat -----------------------------------------------------------------------------------------

async def _stream(http: httpx.AsyncClient, model: str, story: str, level: Level) -> None:
    body = {"model": model, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": f"Write a long story about {story}."}]}
    started = time.perf_counter()
    stamps: list[float] = []
    usage: int | None = None
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:500]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"stream error: {event['error']}")
            if event.get("usage"):
                usage = event["usage"]["completion_tokens"]
            for choice in event.get("choices", ()):
                if choice.get("delta", {}).get("content"):
                    stamps.append(time.perf_counter())
                if reason := choice.get("finish_reason"):
                    level.finish_reasons[reason] = level.finish_reasons.get(reason, 0) + 1
    if not stamps:
        raise RuntimeError("a stream ended without content")
    level.ttft_s.append(stamps[0] - started)
    level.gaps_s += [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    level.completion_tokens += usage if usage is not None else len(stamps)


async def _level(base_url: str, model: str, clients: int) -> Level:
    level = Level(clients, 0.0, 0)

    async def client(http: httpx.AsyncClient, index: int) -> None:
        for turn in range(REQUESTS):
            # Every prompt of the run differs (across client counts too): no server answers one whole from its cache.
            number = (clients * max(CLIENTS) + index) * REQUESTS + turn
            await _stream(http, model, f"{TOPICS[number % len(TOPICS)]} (story {number + 1})", level)

    # A connection per request: llama-server closes a connection after a streamed answer, and a request sent on it
    # before the close is seen fails.
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http, i) for i in range(clients)))
        level.wall_s = time.perf_counter() - started
    return level


def _check_paris(base_url: str) -> str:
    """The model's id on this server, once it answers (Switchboard loads it on the first request) and answers
    well: a server that decodes garbage would make every figure meaningless."""
    model = httpx.get(f"{base_url}/v1/models", timeout=10).json()["data"][0]["id"]
    response = httpx.post(f"{base_url}/v1/chat/completions", timeout=180, json={
        "model": model, "messages": PARIS, "max_tokens": 16, "temperature": 0})
    response.raise_for_status()
    answer = response.json()["choices"][0]["message"]["content"]
    if "Paris" not in answer:
        raise RuntimeError(f"{base_url} answers {answer!r} to the capital of France")
    return str(model)


# -- the servers -----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _switchboard(tmp: Path, parallel: str) -> Iterator[str]:
    from tests.support.servers import start_server

    served = start_server(tmp, env={"SWITCHBOARD_PARALLEL": parallel})  # empty: the setting's default, auto
    try:
        yield served.base_url
    finally:
        served.stop()


@contextlib.contextmanager
def _process(tmp: Path, argv: list[str]) -> Iterator[str]:
    """A peer server on a free loopback port (`argv` ends with its --port flag), in its own process group."""
    from tests.support.servers import free_port

    port = free_port()
    with open(tmp / f"peer-{port}.log", "wb") as log:
        process = subprocess.Popen([*argv, str(port)], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _ready(base_url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not start: {(tmp / f'peer-{port}.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield base_url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/v1/models", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _extra_buffers_off() -> bool:
    """Whether our worker loads models with llama.cpp's extra buffer types (repacking, AMX) turned off."""
    import llama_cpp

    from app.core.runtime.local.llama import model_defaults

    with model_defaults():
        return not llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts


def _servers(model: Path) -> dict[str, Callable[[Path], contextlib.AbstractContextManager[str]] | None]:
    from bench.peers import find_llama_server
    from tests.support.servers import LLAMA_CPP_SERVER

    llama_cpp_server = [sys.executable, "-c", LLAMA_CPP_SERVER, "--model", str(model), "--n_ctx", str(N_CTX),
                        "--flash_attn", "true", "--interrupt_requests", "false", "--host", "127.0.0.1", "--port"]
    binary = find_llama_server()
    llama_server = None if binary is None else [
        str(binary), "-m", str(model), "-np", str(SLOTS), "-c", str(SLOTS * N_CTX), "-fa", "on",
        *(["--no-repack"] if _extra_buffers_off() else []), "--host", "127.0.0.1", "--port"]
    return {SB_ONE: lambda tmp: _switchboard(tmp, "1"), SB_AUTO: lambda tmp: _switchboard(tmp, ""),
            SB_EIGHT: lambda tmp: _switchboard(tmp, "8"),
            LLAMA_CPP: lambda tmp: _process(tmp, llama_cpp_server),
            LLAMA_SERVER: None if llama_server is None else lambda tmp: _process(tmp, llama_server)}


class _OtherLoad:
    """The share of the machine's CPU that processes other than this one and its children used meanwhile: on two
    cores, anyone else's build or tests skew a server's figures, and the report says so."""

    def __init__(self) -> None:
        self.started, self.busy, self.ours = time.monotonic(), self._busy(), self._ours()

    @staticmethod
    def _busy() -> float:
        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    @staticmethod
    def _ours() -> dict[int, float]:
        me = psutil.Process()
        used: dict[int, float] = {}
        for process in (me, *me.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                used[process.pid] = sum(process.cpu_times()[:2])
        return used

    def share(self) -> float:
        ours = sum(used - self.ours.get(pid, 0.0) for pid, used in self._ours().items())
        wall = (time.monotonic() - self.started) * (psutil.cpu_count() or 1)
        return max(0.0, (self._busy() - self.busy - ours) / wall)


def _measure(model: Path) -> tuple[dict[str, list[Level] | None], dict[str, float]]:
    """Every server's levels (None: not found), and the CPU share others used while each was measured."""
    results: dict[str, list[Level] | None] = {}
    others: dict[str, float] = {}
    for name, start in _servers(model).items():
        if start is None:
            print(f"{name}: not found", flush=True)
            results[name] = None
            continue
        with tempfile.TemporaryDirectory() as tmp, start(Path(tmp)) as base_url:
            model_id = _check_paris(base_url)
            load = _OtherLoad()
            levels = []
            for clients in CLIENTS:
                levels.append(asyncio.run(_level(base_url, model_id, clients)))
                print(f"{name}, {clients} clients: {levels[-1].figures}", flush=True)
            results[name], others[name] = levels, load.share()
    return results, others


# -- the report ------------------------------------------------------------------------------------------------

def _figure(results: dict[str, list[Level] | None], server: str, clients: int, metric: str) -> float | None:
    levels = results.get(server)
    return next((lv.figures[metric] for lv in levels or () if lv.clients == clients), None)


def _table(results: dict[str, list[Level] | None], metric: str, title: str, form: str) -> list[str]:
    def cell(server: str, clients: int) -> str:
        value = _figure(results, server, clients, metric)
        if value is None:
            return "not found" if results.get(server) is None else "-"
        ratios = [f"{value / ref:.2f}x {label}" for label, ref_server in (("llama-server", LLAMA_SERVER),
                                                                        ("p1", SB_ONE))
                  if ref_server != server and (ref := _figure(results, ref_server, clients, metric))]
        return form.format(value) + (f" ({', '.join(ratios)})" if ratios and server.startswith("Switchboard")
                                     else "")

    lines = [f"**{title}**", "", "| clients | " + " | ".join(SERVERS) + " |", "|---:" + "|---" * len(SERVERS) + "|"]
    lines += [f"| {c} | " + " | ".join(cell(s, c) for s in SERVERS) + " |" for c in CLIENTS]
    return [*lines, ""]


def _targets(results: dict[str, list[Level] | None]) -> list[tuple[str, bool | None]]:
    """(line, passed); passed is None where the run did not measure it."""
    def ratio(ours_name: str, clients: int, metric: str, reference: str) -> float | None:
        ours, theirs = _figure(results, ours_name, clients, metric), _figure(results, reference, clients, metric)
        return None if ours is None or not theirs else ours / theirs

    checks = ((8, "tokens_per_s", LLAMA_SERVER, 0.9, ">="), (8, "tokens_per_s", SB_ONE, 2.2, ">="),
              (8, "ttft_mean_s", LLAMA_SERVER, 1.5, "<="), (1, "tokens_per_s", LLAMA_SERVER, 0.95, ">="))
    out: list[tuple[str, bool | None]] = []
    for ours_name, (clients, metric, reference, bound, sense) in [(n, c) for n in (SB_AUTO, SB_EIGHT) for c in checks]:
        value = ratio(ours_name, clients, metric, reference)
        passed = None if value is None else (value >= bound if sense == ">=" else value <= bound)
        verdict = {None: "not measured", True: "pass", False: "FAIL"}[passed]
        measured = "" if value is None else f": {value:.2f}x"
        title = next(t for m, t, _ in METRICS if m == metric)
        out.append((f"- {clients} client{'s' * (clients > 1)}, {title}: {ours_name} {sense} {bound}x {reference}"
                    f"{measured} — {verdict}", passed))
    return out


def main() -> bool:
    from tests.support.models import find_default_model

    results, others = _measure(find_default_model())
    targets = _targets(results)
    lines = [f"# Concurrency\n\n`python -m bench concurrency`, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs "
             f"({platform.processor() or platform.machine()}), default model, streaming chat, {MAX_TOKENS}-token "
             f"answers at temperature 0, {REQUESTS} requests per client. Ratios: to llama-server's and to "
             "Switchboard `parallel` 1's.", ""]
    for metric, title, form in METRICS:
        lines += _table(results, metric, title, form)
    lines += ["CPU used by other processes meanwhile (a share of the machine; above a few % the figures are "
              "skewed): " + ", ".join(f"{name} {share:.0%}" for name, share in others.items()), "",
              "Targets (issue 10):", *(line for line, _ in targets)]
    print("\n".join(lines))
    def level_data(level: Level) -> dict[str, Any]:
        # every figure and each request's time to first token; of the thousands of chunk gaps, only their number
        kept = {k: v for k, v in asdict(level).items() if k != "gaps_s"}
        return {**kept, "chunk_gaps": len(level.gaps_s), **level.figures}

    data = {"clients": CLIENTS, "requests": REQUESTS, "max_tokens": MAX_TOKENS,
            "servers": {name: None if levels is None else [level_data(lv) for lv in levels]
                        for name, levels in results.items()},
            "other_cpu_share": others, "targets": [{"line": line, "passed": passed} for line, passed in targets]}
    save_results("concurrency", "\n".join(lines), data)
    return all(passed is not False for _, passed in targets)
