"""The Hugging Face cache, laid out exactly as huggingface_hub writes it, read through scan_cache_dir."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from huggingface_hub import scan_cache_dir

from app.core.catalog.discovery.found import ScanProblem
from app.core.catalog.discovery.hf_cache import hf_cache_dir, scan_hf_cache
from tests.support.gguf_files import FILE_TYPES, write_gguf

OLD_COMMIT = "0" * 39 + "1"
NEW_COMMIT = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"


def put_blob(blobs: Path, source: Path) -> Path:
    """Store `source` as huggingface_hub does for LFS files: blobs/<sha256 of the content>.

    Big files are hard-linked (or, across file systems, symlinked) rather than copied.
    """
    with open(source, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    blob = blobs / digest
    if not blob.exists():
        blobs.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, blob)
        except OSError:
            blob.symlink_to(source)
    return blob


def hf_repo(cache: Path, repo_id: str, files: dict[str, Path], *, commit: str = NEW_COMMIT,
            repo_type: str = "models", ref: str | None = "main") -> Path:
    """models--owner--name/{blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>, refs/<ref>}."""
    repo = cache / f"{repo_type}--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        blob = put_blob(repo / "blobs", source)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def test_models_from_a_real_cache_layout(tmp_path: Path, default_model: Path) -> None:
    cache = tmp_path / "hub"
    src = tmp_path / "src"

    # An older revision whose file is gone from the newest one: only the newest revision counts.
    old = write_gguf(src / "old" / "SmolLM2-135M-Instruct-Q8_0.gguf", file_type=FILE_TYPES["Q8_0"])
    os.utime(old, (1_000_000_000, 1_000_000_000))
    hf_repo(cache, "bartowski/SmolLM2-135M-Instruct-GGUF", {old.name: old}, commit=OLD_COMMIT, ref=None)
    smol = hf_repo(cache, "bartowski/SmolLM2-135M-Instruct-GGUF", {
        "SmolLM2-135M-Instruct-Q4_1.gguf": default_model,  # the real model, hard-linked as its blob
        "README.md": write_gguf(src / "readme-not-gguf.bin"),
    })

    # One repo with a single-file quantization, a 3-part split in a subfolder and a projector.
    parts = {
        f"Q8_0/gemma-3-4b-it-Q8_0-0000{no}-of-00003.gguf": write_gguf(
            src / f"g{no}.gguf", arch="gemma3", split=(no - 1, 3), file_type=FILE_TYPES["Q8_0"])
        for no in (1, 2, 3)
    }
    gemma = hf_repo(cache, "unsloth/gemma-3-4b-it-GGUF", {
        "gemma-3-4b-it-Q4_K_M.gguf": write_gguf(src / "g.gguf", arch="gemma3", file_type=FILE_TYPES["Q4_K_M"]),
        **parts,
        "mmproj-F16.gguf": write_gguf(src / "p.gguf", arch="clip", general_type="mmproj"),
        "tokenizer-vocab.gguf": write_gguf(src / "v.gguf", n_tensors=0, vocab_size=300),
    })

    # Two files with the same quantization: the file stem tells them apart.
    twins = hf_repo(cache, "someone/Twins-GGUF", {
        "Alpha-Q4_K_M.gguf": write_gguf(src / "a.gguf", name="Alpha", file_type=FILE_TYPES["Q4_K_M"]),
        "Beta-Q4_K_M.gguf": write_gguf(src / "b.gguf", name="Beta", file_type=FILE_TYPES["Q4_K_M"]),
    })
    # Datasets are not models, whatever their files.
    hf_repo(cache, "someone/data", {"x.gguf": write_gguf(src / "d.gguf")}, repo_type="datasets")

    assert scan_cache_dir(cache).warnings == []  # huggingface_hub accepts the layout as its own

    result = scan_hf_cache(cache)

    models = {m.id: m for m in result.models}
    assert sorted(models) == [
        "bartowski/smollm2-135m-instruct-gguf:q4_1",
        "someone/twins-gguf/alpha-q4_k_m:q4_k_m",
        "someone/twins-gguf/beta-q4_k_m:q4_k_m",
        "unsloth/gemma-3-4b-it-gguf:q4_k_m",
        "unsloth/gemma-3-4b-it-gguf:q8_0",
    ]
    assert all(m.source == "hf" for m in result.models)

    real = models["bartowski/smollm2-135m-instruct-gguf:q4_1"]
    assert real.path == str(smol / "SmolLM2-135M-Instruct-Q4_1.gguf")  # the snapshot path, not the blob
    assert real.parts == [real.path]
    assert real.size == default_model.stat().st_size
    assert real.header.architecture == "llama"
    assert real.projector is None

    split = models["unsloth/gemma-3-4b-it-gguf:q8_0"]
    assert split.parts == [str(gemma / name) for name in parts]
    assert split.projector == str(gemma / "mmproj-F16.gguf")  # from the repo root into the subfolder
    assert models["unsloth/gemma-3-4b-it-gguf:q4_k_m"].projector == str(gemma / "mmproj-F16.gguf")
    assert models["someone/twins-gguf/alpha-q4_k_m:q4_k_m"].path == str(twins / "Alpha-Q4_K_M.gguf")
    assert models["someone/twins-gguf/beta-q4_k_m:q4_k_m"].display_name == "Beta"

    assert result.problems == [ScanProblem(
        str(gemma / "tokenizer-vocab.gguf"), "hf",
        "vocab-only GGUF (tokenizer without weights), not a model", skipped=True,
    )]


def test_corrupted_cache_gives_problems_and_keeps_the_rest(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    good = hf_repo(cache, "owner/Good-GGUF", {"good-Q4_0.gguf": write_gguf(tmp_path / "good.gguf")})
    broken = hf_repo(cache, "owner/Broken-GGUF", {"broken-Q4_0.gguf": write_gguf(tmp_path / "broken.gguf")})
    for blob in (broken.parent.parent / "blobs").iterdir():
        blob.unlink()  # snapshot link left dangling
    (cache / "not-a-repo").mkdir()
    (tmp_path / "garbage.bin").write_bytes(b"\0" * 64)
    garbage = hf_repo(cache, "owner/Garbage-GGUF", {"garbage-Q4_0.gguf": tmp_path / "garbage.bin"})

    result = scan_hf_cache(cache)

    assert [m.path for m in result.models] == [str(good / "good-Q4_0.gguf")]
    reasons = sorted(p.reason for p in result.problems)
    assert len(reasons) == 3
    assert reasons[0].startswith("Blob missing (broken symlink)")
    assert reasons[1].startswith("Repo path is not a valid HuggingFace cache directory")
    assert reasons[2].startswith("not a GGUF file")
    assert {p.path for p in result.problems} == {str(cache), str(garbage / "garbage-Q4_0.gguf")}


def test_missing_cache_is_empty_and_a_file_is_a_problem(tmp_path: Path) -> None:
    assert scan_hf_cache(tmp_path / "nothing-here").models == []
    assert scan_hf_cache(tmp_path / "nothing-here").problems == []
    not_a_dir = tmp_path / "hub"
    not_a_dir.write_text("oops")
    [problem] = scan_hf_cache(not_a_dir).problems
    assert problem.path == str(not_a_dir)
    assert problem.reason.startswith("cannot read the Hugging Face cache: Scan cache expects a directory")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "/home/u/.cache/huggingface/hub"),
        ({"XDG_CACHE_HOME": "/xdg"}, "/xdg/huggingface/hub"),
        ({"HF_HOME": "/hf", "XDG_CACHE_HOME": "/xdg"}, "/hf/hub"),
        ({"HUGGINGFACE_HUB_CACHE": "/legacy", "HF_HOME": "/hf"}, "/legacy"),
        ({"HF_HUB_CACHE": "/hub", "HUGGINGFACE_HUB_CACHE": "/legacy", "HF_HOME": "/hf"}, "/hub"),
        ({"HF_HOME": "~/hf"}, "/home/u/hf/hub"),
    ],
)
def test_cache_dir_follows_huggingface_hub_rules(env: dict[str, str], expected: str) -> None:
    assert hf_cache_dir(env, "/home/u") == expected
