"""A model's `parallel`: set through PATCH /api/models/{id} (the real app, in-process), and what the pool makes of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.core.config import Config
from app.core.engine import Engine
from app.core.runtime.placement import AUTO_PARALLEL, context_for, estimate_bytes
from app.core.services import Services
from app.core.storage.store import Store
from app.server.app import create_app
from tests.support.models import found

SMOL, EMBED = "smol:q4_1", "embed:f16"
SHAPE = {"block_count": 30, "embedding_length": 576, "head_count": 9, "head_count_kv": 3, "size": 100 << 20}


def make_engine(tmp_path: Path, **settings: object) -> Engine:
    """An engine that builds no worker. On the CPU whatever this machine has: auto's GPU rule has its own tests
    (test_placement_parallel.py)."""
    engine = Engine(Config(discovery=False, n_gpu_layers=0, **settings), Store(tmp_path / "db"))
    engine.registry.sync([found("smol", "q4_1", "/m/smol.gguf"),
                          found("embed", "f16", "/m/embed.gguf", arch="bert", template=None, pooling=1)])
    for model_id in (SMOL, EMBED):
        engine.registry.resolve(model_id).metadata.update(SHAPE)
    return engine


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(Services(make_engine(tmp_path))))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8642") as http:
        yield http


async def test_patch_sets_parallel_and_null_returns_to_auto(client: httpx.AsyncClient) -> None:
    url = f"/api/models/{SMOL}"
    before = (await client.get(url)).json()
    assert (before["parallel"], before["parallel_effective"]) == (None, AUTO_PARALLEL)
    patched = await client.patch(url, json={"parallel": 6})
    assert patched.status_code == 200
    assert (patched.json()["parallel"], patched.json()["parallel_effective"]) == (6, 6)
    assert (await client.patch(url, json={"enabled": True})).json()["parallel"] == 6, "left out: left as it is"
    info = (await client.patch(url, json={"parallel": None})).json()
    assert (info["parallel"], info["parallel_effective"]) == (None, AUTO_PARALLEL)


@pytest.mark.parametrize("bad", [0, 65, -1, "four", 2.5])
async def test_patch_refuses_a_parallel_out_of_bounds(client: httpx.AsyncClient, bad: object) -> None:
    response = await client.patch(f"/api/models/{SMOL}", json={"parallel": bad})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "parallel"
    assert (await client.get(f"/api/models/{SMOL}")).json()["parallel"] is None


def test_the_models_own_setting_wins_over_the_configured_one_and_embeddings_take_one(tmp_path: Path) -> None:
    models = Services(make_engine(tmp_path, parallel=2)).models
    assert models.info(SMOL)["parallel_effective"] == 2
    models.set_parallel(SMOL, 5)
    assert models.info(SMOL)["parallel_effective"] == 5
    models.set_parallel(EMBED, 8)
    assert models.info(EMBED)["parallel_effective"] == 1, "its worker batches a request's inputs in one decode"


def test_the_estimate_and_the_fits_check_count_every_sequence(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, prompt_cache_bytes=0)
    models, entry = Services(engine).models, engine.registry.resolve(SMOL)
    n_ctx = context_for(entry.metadata, engine.config.n_ctx)
    models.set_parallel(SMOL, 8)
    eight = estimate_bytes(entry.metadata, n_ctx, parallel=8)
    assert models.estimate(SMOL)["estimate_bytes"] == models.info(SMOL)["estimate_bytes"] == eight
    # The router's fits check measures the same estimate: eight sequences no longer fit, auto's fewer do.
    engine.pool.budget = estimate_bytes(entry.metadata, n_ctx, parallel=3)
    assert not models.estimate(SMOL)["fits"] and not engine.pool.fits(entry)
    models.set_parallel(SMOL, None)
    estimate = models.estimate(SMOL)
    assert (estimate["parallel_effective"], estimate["fits"]) == (3, True)
