"""scan() over every source, with roots from parameters or from the environment at call time."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_discovery_hf import hf_repo
from test_discovery_ollama import MODEL, add_blob, layer, write_manifest

from app.core.catalog.discovery.scan import scan
from tests.support.gguf_files import FILE_TYPES, write_gguf


@pytest.fixture
def machine(tmp_path: Path, default_model: Path) -> dict[str, Path]:
    """A home with one model in each place: HF cache, Ollama store, ~/models, LM Studio."""
    home = tmp_path / "home"
    hf_repo(home / ".cache" / "huggingface" / "hub", "bartowski/SmolLM2-135M-Instruct-GGUF",
            {"SmolLM2-135M-Instruct-Q4_1.gguf": default_model})
    store = home / ".ollama" / "models"
    write_manifest(store, "registry.ollama.ai/library/smollm2/latest", [layer(MODEL, add_blob(store, default_model))])
    write_gguf(home / "models" / "Tiny-Q8_0.gguf", file_type=FILE_TYPES["Q8_0"])
    write_gguf(home / ".lmstudio" / "models" / "pub" / "Repo-GGUF" / "Repo-Q4_K_M.gguf", file_type=FILE_TYPES["Q4_K_M"])
    (tmp_path / "work").mkdir()
    return {"home": home, "cwd": tmp_path / "work", "tmp": tmp_path, "default_model": default_model}


EVERYWHERE = [
    ("embedded", "smollm2-135m-instruct:q4_1"),
    ("hf", "bartowski/smollm2-135m-instruct-gguf:q4_1"),
    ("ollama", "smollm2:latest"),
    ("folder", "tiny:q8_0"),
    ("lmstudio", "repo:q4_k_m"),
]


def test_every_source_from_an_injected_home(machine: dict[str, Path]) -> None:
    result = scan(home=machine["home"], cwd=machine["cwd"], env={})
    assert [(m.source, m.id) for m in result.models] == EVERYWHERE
    assert result.problems == []
    # The same file under three names: each source reports its own, the registry merges.
    assert {m.size for m in result.models[:3]} == {machine["default_model"].stat().st_size}


def test_sources_and_default_folders_narrow_the_scan(machine: dict[str, Path]) -> None:
    only = scan(sources=("ollama", "folders"), home=machine["home"], cwd=machine["cwd"], env={})
    assert [m.id for m in only.models] == ["smollm2:latest", "tiny:q8_0", "repo:q4_k_m"]
    extra = machine["tmp"] / "extra"
    write_gguf(extra / "Extra-Q4_0.gguf")
    no_defaults = scan(sources=("folders",), default_folders=False, extra_dirs=[extra],
                       home=machine["home"], cwd=machine["cwd"], env={})
    assert [m.id for m in no_defaults.models] == ["extra:q4_0"]
    with pytest.raises(ValueError, match="unknown discovery source"):
        scan(sources=("lmstudio",), home=machine["home"], env={})


def test_environment_is_read_at_call_time(machine: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = machine["tmp"] / "elsewhere"
    elsewhere.mkdir()
    (machine["home"] / ".cache" / "huggingface" / "hub").rename(elsewhere / "hub")
    (machine["home"] / ".ollama" / "models").rename(elsewhere / "ollama")
    monkeypatch.setenv("HOME", str(machine["home"]))
    monkeypatch.chdir(machine["cwd"])
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(elsewhere))
    monkeypatch.setenv("OLLAMA_MODELS", str(elsewhere / "ollama"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)

    result = scan(sources=("hf", "ollama", "folders"))
    assert [(m.source, m.id) for m in result.models] == EVERYWHERE[1:]
    assert all(m.path.startswith(str(machine["tmp"])) for m in result.models)

    monkeypatch.setenv("HF_HUB_CACHE", str(machine["tmp"] / "empty"))
    monkeypatch.setenv("OLLAMA_MODELS", str(machine["tmp"] / "empty"))
    assert [m.source for m in scan(sources=("hf", "ollama")).models] == []
