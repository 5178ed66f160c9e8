"""Plain folders and LM Studio's: ./models, ~/models, ~/.lmstudio/models, ~/.cache/lm-studio/models, extra folders."""

from __future__ import annotations

from pathlib import Path

from app.core.catalog.discovery.folders import Folder, default_model_folders, scan_folders
from app.core.catalog.discovery.found import ScanResult
from app.core.catalog.discovery.scan import scan, scan_paths
from tests.support.gguf_files import FILE_TYPES, write_gguf


def _folders_only(home: Path, cwd: Path, *extra: Path) -> ScanResult:
    return scan(sources=("folders",), home=home, cwd=cwd, env={}, extra_dirs=extra)


def test_default_and_extra_folders(tmp_path: Path, default_model: Path) -> None:
    home, work, extra = tmp_path / "home", tmp_path / "work", tmp_path / "extra"
    (home / "models").mkdir(parents=True)
    (home / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").symlink_to(default_model)
    qwen = write_gguf(work / "models" / "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf", file_type=FILE_TYPES["Q4_K_M"])
    lms = write_gguf(home / ".lmstudio" / "models" / "lmstudio-community" / "Phi-3-GGUF" / "Phi-3-mini-Q8_0.gguf",
                     arch="phi3", file_type=FILE_TYPES["Q8_0"])
    old_lms = write_gguf(home / ".cache" / "lm-studio" / "models" / "TheBloke" / "Tiny-GGUF" / "tiny.gguf",
                         file_type=FILE_TYPES["Q4_0"])  # quantization only in the header
    plain = write_gguf(extra / "sub" / "no-quant-anywhere.gguf")
    (extra / "readme.txt").write_text("not a model")

    result = _folders_only(home, work, extra, tmp_path / "missing")

    found = {m.id: (m.source, m.path) for m in result.models}
    assert found == {
        "qwen2.5-0.5b-instruct:q4_k_m": ("folder", str(qwen)),
        "smollm2-135m-instruct:q4_1": ("folder", str(home / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")),
        "phi-3-mini:q8_0": ("lmstudio", str(lms)),
        "tiny:q4_0": ("lmstudio", str(old_lms)),
        "no-quant-anywhere:gguf": ("folder", str(plain)),
    }
    smol = next(m for m in result.models if m.id == "smollm2-135m-instruct:q4_1")
    assert smol.size == default_model.stat().st_size
    assert smol.header.context_length == 8192
    # Default folders may be absent; a folder the user named must exist.
    assert [(p.path, p.reason) for p in result.problems] == [(str(tmp_path / "missing"), "not found")]


def test_missing_defaults_are_silent(tmp_path: Path) -> None:
    result = _folders_only(tmp_path / "home", tmp_path / "work")
    assert result.models == [] and result.problems == []
    assert [(f.source, f.optional) for f in default_model_folders(str(tmp_path), str(tmp_path))] == [
        ("folder", True), ("folder", True), ("lmstudio", True), ("lmstudio", True)
    ]


def test_a_folder_reached_twice_is_read_once(tmp_path: Path) -> None:
    # Run from home: ./models and ~/models are the same folder; an extra folder links into it too.
    model = write_gguf(tmp_path / "models" / "m-Q4_0.gguf")
    (tmp_path / "link").symlink_to(tmp_path / "models")
    result = _folders_only(tmp_path, tmp_path, tmp_path / "link")
    assert [m.path for m in result.models] == [str(model)]
    assert result.problems == []


def test_split_projector_vocab_and_bad_files_in_a_folder(tmp_path: Path) -> None:
    repo = tmp_path / "models" / "publisher" / "Vision-GGUF"
    for no in (1, 2, 3):
        write_gguf(repo / f"Vision-7B-Q4_K_M-0000{no}-of-00003.gguf", split=(no - 1, 3),
                   file_type=FILE_TYPES["Q4_K_M"])
    mmproj = write_gguf(repo / "mmproj-Vision-7B-f16.gguf", arch="clip")
    vocab = write_gguf(tmp_path / "models" / "vocab" / "ggml-vocab-llama-bpe.gguf", n_tensors=0, vocab_size=300)
    bad = tmp_path / "models" / "bad"
    bad.mkdir()
    (bad / "download.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")  # interrupted download
    (bad / "page.gguf").write_text("<html>rate limited</html>")
    (bad / "gone.gguf").symlink_to(tmp_path / "nowhere.gguf")
    (bad / "up").symlink_to(bad, target_is_directory=True)

    result = scan_paths([tmp_path / "models"])

    [model] = result.models
    assert model.id == "vision-7b:q4_k_m"
    assert model.parts == [str(repo / f"Vision-7B-Q4_K_M-0000{no}-of-00003.gguf") for no in (1, 2, 3)]
    assert model.projector == str(mmproj)
    problems = {Path(p.path).name: (p.skipped, p.reason) for p in result.problems}
    assert problems["ggml-vocab-llama-bpe.gguf"] == (
        True, "vocab-only GGUF (tokenizer without weights), not a model")
    assert problems["gone.gguf"] == (False, "broken symlink: target does not exist")
    assert problems["up"] == (False, f"symlink loop: points back to {bad}")
    assert problems["download.gguf"][1].startswith("truncated")
    assert problems["page.gguf"][1].startswith("not a GGUF file")
    assert len(problems) == 5 and str(vocab) in {p.path for p in result.problems}


def test_scan_paths_takes_files_whatever_their_name(tmp_path: Path) -> None:
    blob = write_gguf(tmp_path / "sha256-0123", file_type=FILE_TYPES["Q8_0"], name="Named Inside")
    result = scan_paths([blob, tmp_path / "absent.gguf"])
    assert [(m.id, m.display_name, m.source) for m in result.models] == [("sha256-0123:q8_0", "Named Inside", "folder")]
    assert [(p.path, p.reason) for p in result.problems] == [(str(tmp_path / "absent.gguf"), "not found")]


def test_scan_folders_with_explicit_folder_objects(tmp_path: Path) -> None:
    write_gguf(tmp_path / "a" / "x-Q4_0.gguf")
    result = scan_folders([Folder(str(tmp_path / "a"), "lmstudio")])
    assert [(m.id, m.source) for m in result.models] == [("x:q4_0", "lmstudio")]
