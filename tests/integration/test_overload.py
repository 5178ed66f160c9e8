"""Under overload nothing is lost: every request gets its answer or a well-formed 429 / 504, and the model serves
normally afterwards."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import httpx

from tests.support.servers import Served, start_server

SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer in one word."}
QUESTION = {"role": "user", "content": "What is the capital of France?"}
CLIENTS, REQUESTS = 64, 20


def _model_id(served: Served) -> str:
    return str(httpx.get(f"{served.base_url}/v1/models").json()["data"][0]["id"])


def _answers(served: Served, model_id: str) -> None:
    response = httpx.post(f"{served.base_url}/v1/chat/completions", timeout=60,
                          json={"model": model_id, "messages": [SYSTEM, QUESTION], "temperature": 0, "max_tokens": 8})
    assert response.status_code == 200 and "Paris" in response.json()["choices"][0]["message"]["content"]
    assert httpx.get(f"{served.base_url}/api/models/{model_id}").json()["health"] == "healthy"


def test_64_clients_against_a_queue_of_8(tmp_path: Path) -> None:
    served = start_server(tmp_path, env={"SWITCHBOARD_MAX_QUEUE": "8"})
    try:
        model_id = _model_id(served)
        statuses: Counter[int] = Counter()
        malformed: list[str] = []

        async def client(http: httpx.AsyncClient, index: int) -> None:
            for turn in range(REQUESTS):
                body = {"model": model_id, "max_tokens": 2, "temperature": 0, "stream": turn % 2 == 1,
                        "messages": [SYSTEM, {"role": "user", "content": f"Say the number {index}."}]}
                response = await http.post("/v1/chat/completions", json=body)
                statuses[response.status_code] += 1
                if response.status_code == 429:
                    if not response.headers.get("retry-after", "").isdigit() or \
                            response.json()["error"]["code"] != "queue_full":
                        malformed.append(response.text)
                elif response.status_code == 200 and body["stream"]:
                    if not response.text.rstrip().endswith("data: [DONE]"):
                        malformed.append(response.text)
                elif response.status_code != 200:
                    malformed.append(f"{response.status_code} {response.text}")

        async def run() -> None:
            limits = httpx.Limits(max_connections=CLIENTS)
            async with httpx.AsyncClient(base_url=served.base_url, timeout=120, limits=limits) as http:
                await asyncio.gather(*(client(http, i) for i in range(CLIENTS)))

        asyncio.run(run())
        assert not malformed, malformed[:3]
        assert sum(statuses.values()) == CLIENTS * REQUESTS
        assert set(statuses) <= {200, 429} and statuses[200] > 0 and statuses[429] > 0, statuses
        _answers(served, model_id)
    finally:
        served.stop()


def test_a_request_past_its_deadline_is_cancelled_with_504(tmp_path: Path) -> None:
    served = start_server(tmp_path, env={"SWITCHBOARD_REQUEST_TIMEOUT_S": "5"})
    try:
        model_id = _model_id(served)
        # Loaded outside any request's deadline: the deadlines below are spent generating.
        assert httpx.post(f"{served.base_url}/api/models/{model_id}/load", timeout=120).status_code == 200
        _answers(served, model_id)
        # Counting never ends of itself: only the deadline stops these.
        long = {"model": model_id, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 3000, "temperature": 0}
        response = httpx.post(f"{served.base_url}/v1/completions", json=long, timeout=60)
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "request_timeout"
        with httpx.stream("POST", f"{served.base_url}/v1/completions", json={**long, "stream": True},
                          timeout=60) as streamed:
            assert streamed.status_code == 200
            events = [json.loads(line[6:]) for line in streamed.iter_lines()
                      if line.startswith("data: {")]
        assert events[0]["choices"], "tokens came first"
        assert events[-1]["error"]["code"] == "request_timeout"
        # Both jobs were cancelled in the worker: the next request is not stuck behind them.
        _answers(served, model_id)
    finally:
        served.stop()
