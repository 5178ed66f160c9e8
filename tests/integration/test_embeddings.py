"""/v1/embeddings on a real embedding GGUF: the default model re-written with a pooling type and no chat template."""

from __future__ import annotations

import math
from pathlib import Path

import openai
import pytest

from tests.support.models import make_embedding_model
from tests.support.servers import Served, start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, default_model: Path):
    tmp = tmp_path_factory.mktemp("embed")
    (tmp / "models").mkdir()
    make_embedding_model(default_model, tmp / "models" / "smol-embed.Q4_1.gguf")
    server = start_server(tmp, "--model-dir", str(tmp / "models"))
    yield server
    server.stop()


def test_auto_routes_embeddings_to_the_embedding_model(served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="x", max_retries=0, timeout=60)
    models = {m.id: m for m in client.models.list().data}
    assert models["smol-embed:q4_1"].capabilities == ["embeddings"]
    raw = client.embeddings.with_raw_response.create(model="auto", input=["The cat sat.", "A dog ran.", "The cat sat."])
    result = raw.parse()  # the openai client asks for base64 and decodes it
    assert raw.headers["x-switchboard-model"] == "smol-embed:q4_1"
    vectors = [d.embedding for d in result.data]
    assert [len(v) for v in vectors] == [576, 576, 576]
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-5) and vectors[0] != vectors[1]
    assert all(math.isfinite(x) for x in vectors[0])
    assert result.usage.prompt_tokens > 0
    floats = client.embeddings.create(model="smol-embed:q4_1", input="The cat sat.", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-5)


def test_chat_is_not_routed_to_the_embedding_model(served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="x", max_retries=0, timeout=60)
    with pytest.raises(openai.NotFoundError, match="chat"):
        client.chat.completions.create(model="smol-embed:q4_1", messages=[{"role": "user", "content": "hi"}])
    answer = client.chat.completions.with_raw_response.create(
        model="auto", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert answer.headers["x-switchboard-model"] == "smollm2-135m-instruct:q4_1"
