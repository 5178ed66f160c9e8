"""An Ollama store as `ollama pull` leaves it: manifests/<host>/<namespace>/<model>/<tag> and blobs/sha256-<hex>."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from app.core.catalog.discovery.ollama import ollama_name, ollama_store, scan_ollama
from tests.support.gguf_files import FILE_TYPES, write_gguf

CONFIG = "application/vnd.docker.container.image.v1+json"
MODEL = "application/vnd.ollama.image.model"
PROJECTOR = "application/vnd.ollama.image.projector"
TEMPLATE = "application/vnd.ollama.image.template"


def add_blob(store: Path, source: Path) -> dict[str, Any]:
    """Put `source` in blobs/ under its real sha256 (hard-linked when possible) and return its layer fields."""
    with open(source, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    blob = store / "blobs" / f"sha256-{digest}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        try:
            os.link(source, blob)
        except OSError:  # another file system: a symlink would lead outside blobs/, so copy
            shutil.copyfile(source, blob)
    return {"digest": f"sha256:{digest}", "size": source.stat().st_size}


def write_manifest(store: Path, name: str, layers: list[dict[str, Any]], raw: str | None = None) -> Path:
    """manifests/<name> with Ollama's schema-2 JSON (or `raw` text instead)."""
    path = store / "manifests" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"mediaType": CONFIG, "digest": "sha256:" + "c" * 64, "size": 2}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": config, "layers": layers}
    path.write_text(raw if raw is not None else json.dumps(manifest))
    return path


def layer(media_type: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"mediaType": media_type, **fields}


_OPENED: list[str] | None = None


def _record_opens(event: str, args: tuple[Any, ...]) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_record_opens)  # audit hooks cannot be removed; _OPENED switches it on and off


def opened_during(fn: Any, *args: Any) -> tuple[Any, list[str]]:
    global _OPENED
    _OPENED = []
    try:
        return fn(*args), _OPENED
    finally:
        _OPENED = None


def test_models_from_a_real_store(tmp_path: Path, default_model: Path) -> None:
    store = tmp_path / "ollama" / "models"
    src = tmp_path / "src"
    smollm2 = add_blob(store, default_model)
    template = add_blob(store, write_gguf(src / "template.bin"))
    write_manifest(store, "registry.ollama.ai/library/smollm2/latest",
                   [layer(MODEL, smollm2), layer(TEMPLATE, template)])
    write_manifest(store, "registry.ollama.ai/library/smollm2/135m", [layer(MODEL, smollm2)])

    vision_model = add_blob(store, write_gguf(src / "llava.gguf", name="LLaVA", file_type=FILE_TYPES["Q4_0"]))
    projector = add_blob(store, write_gguf(src / "clip.gguf", arch="clip"))
    write_manifest(store, "registry.ollama.ai/someone/llava/7b",
                   [layer(MODEL, vision_model), layer(PROJECTOR, projector)])
    hf = add_blob(store, write_gguf(src / "qwen.gguf", file_type=FILE_TYPES["Q4_K_M"]))
    write_manifest(store, "hf.co/bartowski/Qwen2.5-0.5B-Instruct-GGUF/Q4_K_M", [layer(MODEL, hf)])

    result = scan_ollama(store)

    assert result.problems == []
    models = {m.id: m for m in result.models}
    assert sorted(models) == [
        "hf.co/bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M",
        "smollm2:135m",
        "smollm2:latest",
        "someone/llava:7b",
    ]
    smol = models["smollm2:latest"]
    blob = store / "blobs" / ("sha256-" + smollm2["digest"].removeprefix("sha256:"))
    assert (smol.source, smol.name, smol.tag) == ("ollama", "smollm2", "latest")
    assert smol.path == str(blob) and smol.parts == [str(blob)]
    assert smol.size == default_model.stat().st_size
    assert smol.header.architecture == "llama" and smol.header.quantization == "Q4_1"
    assert smol.projector is None
    llava = models["someone/llava:7b"]
    assert llava.projector == str(store / "blobs" / ("sha256-" + projector["digest"][7:]))
    assert llava.display_name == "LLaVA"


def test_bad_manifests_are_problems_and_nothing_outside_the_store_is_opened(tmp_path: Path) -> None:
    store = tmp_path / "store"
    src = tmp_path / "src"
    good = add_blob(store, write_gguf(src / "good.gguf"))
    write_manifest(store, "registry.ollama.ai/library/good/latest", [layer(MODEL, good)])

    # A real model just outside the store, where a traversing digest would land.
    outside = write_gguf(tmp_path / "secret.gguf", name="Not in the store")
    outside_hex = hashlib.sha256(outside.read_bytes()).hexdigest()
    evil = {
        "etc-passwd": "sha256:../../../etc/passwd",
        "escape": "sha256-../../secret.gguf",
        "short": "sha256:" + "a" * 63,
        "long": "sha256:" + "a" * 65,
        "newline": "sha256:" + outside_hex + "\n",
        "md5": "md5:" + "a" * 64,
        "absolute": str(outside),
    }
    for name, digest in evil.items():
        write_manifest(store, f"registry.ollama.ai/library/{name}/latest",
                       [layer(MODEL, {"digest": digest, "size": outside.stat().st_size})])
    write_manifest(store, "registry.ollama.ai/library/notjson/latest", [], raw="{this is not json")
    write_manifest(store, "registry.ollama.ai/library/nolayers/latest", [], raw='{"schemaVersion": 2}')
    write_manifest(store, "registry.ollama.ai/library/nomodel/latest",
                   [layer(TEMPLATE, add_blob(store, write_gguf(src / "t.bin")))])
    write_manifest(store, "registry.ollama.ai/library/missing/latest",
                   [layer(MODEL, {"digest": "sha256:" + "b" * 64, "size": 10})])
    write_manifest(store, "registry.ollama.ai/library/badsize/latest",
                   [layer(MODEL, {**good, "size": good["size"] + 1})])
    # A correctly named blob that is a symlink to the file outside: the resolved path leaves blobs/.
    (store / "blobs" / f"sha256-{outside_hex}").symlink_to(outside)
    write_manifest(store, "registry.ollama.ai/library/linked/latest",
                   [layer(MODEL, {"digest": f"sha256:{outside_hex}", "size": outside.stat().st_size})])
    vocab = add_blob(store, write_gguf(src / "vocab.gguf", n_tensors=0, vocab_size=300))
    write_manifest(store, "registry.ollama.ai/library/vocab/latest", [layer(MODEL, vocab)])
    truncated = src / "truncated.bin"
    truncated.write_bytes((src / "good.gguf").read_bytes()[:100])
    write_manifest(store, "registry.ollama.ai/library/truncated/latest", [layer(MODEL, add_blob(store, truncated))])
    write_manifest(store, "registry.ollama.ai/stray-file", [], raw="{}")

    scan_ollama(store)  # warm-up: lazy imports open module files outside the store
    result, opened = opened_during(scan_ollama, store)

    assert [m.id for m in result.models] == ["good:latest"]
    real_store = os.path.realpath(store)
    assert opened and all(os.path.realpath(p).startswith(real_store + os.sep) for p in opened), opened
    assert str(outside) not in {m.path for m in result.models}

    manifests = store / "manifests" / "registry.ollama.ai" / "library"
    reasons = {Path(p.path).relative_to(store / "manifests").as_posix(): p.reason for p in result.problems}
    for name, digest in evil.items():
        assert reasons.pop(f"registry.ollama.ai/library/{name}/latest") == (
            f"invalid layer digest {digest!r} (expected sha256:<64 hex digits>)"
        )
    assert reasons == {
        "registry.ollama.ai/library/notjson/latest": "manifest is not valid JSON",
        "registry.ollama.ai/library/nolayers/latest": 'manifest has no valid "layers" list',
        "registry.ollama.ai/library/nomodel/latest": "manifest has 0 model layers, expected 1",
        "registry.ollama.ai/library/missing/latest": f"blob sha256-{'b' * 64} is missing",
        "registry.ollama.ai/library/badsize/latest":
            f"blob sha256-{good['digest'][7:]} is {good['size']} bytes, the manifest says {good['size'] + 1}",
        "registry.ollama.ai/library/linked/latest":
            f"blob sha256-{outside_hex} resolves outside the blobs folder: {os.path.realpath(outside)}",
        "registry.ollama.ai/library/vocab/latest":
            "model layer is a vocab-only GGUF (tokenizer without weights), not a model",
        "registry.ollama.ai/library/truncated/latest": reasons["registry.ollama.ai/library/truncated/latest"],
        "registry.ollama.ai/stray-file": "not a manifest: expected manifests/<host>/<namespace>/<model>/<tag>",
    }
    assert reasons["registry.ollama.ai/library/truncated/latest"].startswith("blob sha256-")
    assert "truncated" in reasons["registry.ollama.ai/library/truncated/latest"]
    assert manifests.is_dir()


def test_symlinked_manifests_are_followed_and_loops_are_not(tmp_path: Path) -> None:
    store = tmp_path / "store"
    model = add_blob(store, write_gguf(tmp_path / "m.gguf"))
    elsewhere = tmp_path / "elsewhere"
    write_manifest(elsewhere, "mirror.example.com/team/tiny/v1", [layer(MODEL, model)])
    (store / "manifests").mkdir(parents=True)
    (store / "manifests" / "mirror.example.com").symlink_to(elsewhere / "manifests" / "mirror.example.com")
    loop = store / "manifests" / "mirror.example.com" / "team" / "tiny" / "again"
    loop.symlink_to("..", target_is_directory=True)

    result = scan_ollama(store)

    assert [m.id for m in result.models] == ["mirror.example.com/team/tiny:v1"]
    assert [(p.path, p.reason.split(":")[0]) for p in result.problems] == [
        (str(store / "manifests" / "mirror.example.com" / "team" / "tiny" / "again"), "symlink loop")
    ]


def test_a_broken_projector_leaves_the_model_text_only(tmp_path: Path) -> None:
    store = tmp_path / "store"
    model = add_blob(store, write_gguf(tmp_path / "m.gguf"))
    manifest = write_manifest(store, "registry.ollama.ai/library/llava/latest",
                              [layer(MODEL, model), layer(PROJECTOR, {"digest": "sha256:../x", "size": 1})])
    result = scan_ollama(store)
    assert [(m.id, m.projector) for m in result.models] == [("llava:latest", None)]
    assert [(p.path, p.reason) for p in result.problems] == [
        (str(manifest), "invalid layer digest 'sha256:../x' (expected sha256:<64 hex digits>)")
    ]


def test_store_location_and_names(tmp_path: Path) -> None:
    assert scan_ollama(tmp_path / "no-ollama").models == []
    assert scan_ollama(tmp_path / "no-ollama").problems == []
    assert ollama_store({}, "/home/u") == "/home/u/.ollama/models"
    assert ollama_store({"OLLAMA_MODELS": "/srv/ollama"}, "/home/u") == "/srv/ollama"
    assert ollama_store({"OLLAMA_MODELS": "~/big/ollama"}, "/home/u") == "/home/u/big/ollama"
    assert ollama_name("registry.ollama.ai", "library", "smollm2") == "smollm2"
    assert ollama_name("registry.ollama.ai", "someone", "tool") == "someone/tool"
    assert ollama_name("hf.co", "bartowski", "X-GGUF") == "hf.co/bartowski/X-GGUF"


@pytest.mark.parametrize("digest", ["sha256:" + "A" * 64, "sha256-" + "0f" * 32])
def test_both_digest_spellings_and_any_hex_case_are_accepted(tmp_path: Path, digest: str) -> None:
    store = tmp_path / "store"
    source = write_gguf(tmp_path / "m.gguf")
    blob = store / "blobs" / ("sha256-" + digest[7:])
    blob.parent.mkdir(parents=True)
    shutil.copyfile(source, blob)
    write_manifest(store, "registry.ollama.ai/library/m/latest",
                   [layer(MODEL, {"digest": digest, "size": source.stat().st_size})])
    assert [m.path for m in scan_ollama(store).models] == [str(blob)]
