"""A model's `parallel` through a real server: set, shown, validated, applied at the next load, kept across restarts."""

from __future__ import annotations

from pathlib import Path

import httpx

from app.core.runtime.placement import AUTO_PARALLEL, context_for, kv_cache_bytes
from tests.support.servers import Served, start_server

DEFAULT_ID = "smollm2-135m-instruct:q4_1"
URL = f"/api/models/{DEFAULT_ID}"
# On the CPU, whatever this machine has, so that auto is the CPU's.
CPU = {"SWITCHBOARD_N_GPU_LAYERS": "0"}


def api(served: Served, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{served.base_url}{path}", timeout=120, **kwargs)


def test_parallel_is_set_shown_applied_at_the_next_load_and_kept(tmp_path: Path) -> None:
    served = start_server(tmp_path, env=CPU)
    try:
        auto = api(served, "GET", URL).json()
        assert (auto["parallel"], auto["parallel_effective"]) == (None, AUTO_PARALLEL)
        for bad in (0, 65):
            refused = api(served, "PATCH", URL, json={"parallel": bad})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "parallel"

        patched = api(served, "PATCH", URL, json={"parallel": 2})
        assert patched.status_code == 200
        two = api(served, "GET", URL).json()
        assert (two["parallel"], two["parallel_effective"]) == (2, 2)
        # The estimate counts every sequence's KV cache: two fewer sequences, two contexts' KV cache less.
        meta = two["metadata"]
        per_sequence = kv_cache_bytes(meta, context_for(meta, 4096))  # the default n_ctx
        assert auto["estimate_bytes"] - two["estimate_bytes"] == (AUTO_PARALLEL - 2) * per_sequence > 0

        loaded = api(served, "POST", f"{URL}/load").json()
        assert [w["parallel"] for w in loaded["workers"]] == [2]
        answered = api(served, "POST", "/v1/chat/completions", json={
            "model": DEFAULT_ID, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}).json()
        # The worker's own report: two slots, idle now, one holding that request's prompt and answer.
        slots = api(served, "GET", URL).json()["workers"][0]["slots"]
        assert [s["busy"] for s in slots] == [False, False]
        assert sorted(s["tokens"] for s in slots)[-1] >= answered["usage"]["prompt_tokens"]
        changed = api(served, "PATCH", URL, json={"parallel": 3}).json()
        # A loaded worker keeps what it loaded with; the setting applies at its next load.
        assert (changed["parallel"], changed["parallel_effective"]) == (3, 2)
        assert [w["parallel"] for w in changed["workers"]] == [2]
        api(served, "POST", f"{URL}/unload")
        assert api(served, "GET", URL).json()["parallel_effective"] == 3
    finally:
        served.stop()

    again = start_server(tmp_path, env=CPU)
    try:
        kept = api(again, "GET", URL).json()
        assert (kept["parallel"], kept["parallel_effective"]) == (3, 3)
        back = api(again, "PATCH", URL, json={"parallel": None}).json()
        assert (back["parallel"], back["parallel_effective"]) == (None, AUTO_PARALLEL)
    finally:
        again.stop()
