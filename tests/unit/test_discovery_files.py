"""The logic every source shares: grouping split parts, attaching projectors, skipping non-models, safe walks."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.catalog.discovery.files import file_model_name, group_files, models_from_files, walk_files
from app.core.catalog.discovery.found import ScanProblem
from tests.support.gguf_files import FILE_TYPES, write_gguf


def _paths(*paths: Path) -> list[str]:
    return [str(p) for p in paths]


def _reasons(problems: list[ScanProblem]) -> dict[str, str]:
    return {os.path.basename(p.path): p.reason for p in problems}


@pytest.mark.parametrize(
    ("stem", "name"),
    [
        ("SmolLM2-135M-Instruct.Q4_1", "smollm2-135m-instruct"),
        ("Qwen2.5-0.5B-Instruct-Q4_K_M", "qwen2.5-0.5b-instruct"),
        ("gemma-3-4b-it-UD-Q4_K_XL", "gemma-3-4b-it"),
        ("Llama-3.2-1B-Instruct-IQ2_XXS", "llama-3.2-1b-instruct"),
        ("Qwen3-0.6B-BF16", "qwen3-0.6b"),
        ("ggml-model-f16", "ggml-model"),
        ("phi-2", "phi-2"),
        ("Q4_K_M", "q4_k_m"),  # nothing but a quantization: keep it rather than an empty name
    ],
)
def test_file_model_name_drops_the_quantization(stem: str, name: str) -> None:
    assert file_model_name(stem) == name


def test_split_parts_become_one_model_with_all_parts_in_order(tmp_path: Path) -> None:
    parts = [
        write_gguf(tmp_path / f"Big-7B-Q4_K_M-0000{no}-of-00003.gguf", split=(no - 1, 3),
                   file_type=FILE_TYPES["Q4_K_M"])
        for no in (3, 1, 2)  # found in any order
    ]
    result = models_from_files(_paths(*parts), "folder")
    assert result.problems == []
    [model] = result.models
    assert model.id == "big-7b:q4_k_m"
    assert model.parts == _paths(*(tmp_path / f"Big-7B-Q4_K_M-0000{no}-of-00003.gguf" for no in (1, 2, 3)))
    assert model.path == model.parts[0]
    assert model.header.split_no == 0
    assert model.size == sum(p.stat().st_size for p in parts)


def test_incomplete_or_mislabelled_split_is_a_problem(tmp_path: Path) -> None:
    first = write_gguf(tmp_path / "a" / "M-00001-of-00003.gguf", split=(0, 3))
    third = write_gguf(tmp_path / "a" / "M-00003-of-00003.gguf", split=(2, 3))
    liar = write_gguf(tmp_path / "b" / "N-00002-of-00002.gguf", split=(0, 2))  # header says part 1
    unnamed = write_gguf(tmp_path / "c" / "renamed.gguf", split=(1, 2))
    result = models_from_files(_paths(first, third, liar, unnamed), "folder")
    assert result.models == []
    reasons = _reasons(result.problems)
    assert reasons["M-00001-of-00003.gguf"] == "split model M is incomplete: missing part(s) 2 of 3"
    assert reasons["N-00002-of-00002.gguf"] == "file name says split part 2 of 2, but its header says part 1 of 2"
    assert reasons["renamed.gguf"] == "split part 2 of 2 not named <name>-0000N-of-0000M.gguf"
    assert not any(p.skipped for p in result.problems)


def test_projector_attaches_to_the_models_in_its_folder(tmp_path: Path) -> None:
    vision = tmp_path / "vision"
    model = write_gguf(vision / "Gemma-3-4B-it-Q4_K_M.gguf", arch="gemma3")
    other = write_gguf(vision / "Gemma-3-4B-it-Q8_0.gguf", arch="gemma3")
    small = write_gguf(vision / "mmproj-model-f16.gguf", arch="clip", general_type="mmproj")
    write_gguf(vision / "mmproj-model-f32.gguf", arch="clip", general_type="mmproj", n_tensors=8)
    lonely = write_gguf(tmp_path / "elsewhere" / "projector.gguf", arch="clip")
    text = write_gguf(tmp_path / "text" / "tiny.gguf")
    paths = sorted(str(p) for p in tmp_path.rglob("*.gguf"))

    result = models_from_files(paths, "folder")

    by_path = {m.path: m for m in result.models}
    assert set(by_path) == set(_paths(model, other, text))
    # f16 and f32 projectors: the smaller one is attached, to both quantizations beside it.
    assert by_path[str(model)].projector == by_path[str(other)].projector == str(small)
    assert by_path[str(text)].projector is None
    assert result.problems == [
        ScanProblem(str(lonely), "folder", "vision projector (mmproj) with no model beside it", skipped=True)
    ]


def test_projectors_per_dir_false_shares_a_projector_across_subfolders(tmp_path: Path) -> None:
    model = write_gguf(tmp_path / "Q4_K_M" / "m-Q4_K_M.gguf")
    projector = write_gguf(tmp_path / "mmproj-F16.gguf", arch="clip")
    groups, problems = group_files(_paths(model, projector), "hf", projectors_per_dir=False)
    assert problems == []
    assert [(g.parts, g.projector) for g in groups] == [([str(model)], str(projector))]


def test_vocab_only_file_is_skipped_with_a_reason(tmp_path: Path) -> None:
    vocab = write_gguf(tmp_path / "ggml-vocab-llama.gguf", n_tensors=0, vocab_size=300)
    result = models_from_files([str(vocab)], "folder")
    assert result.models == []
    assert result.problems == [
        ScanProblem(str(vocab), "folder", "vocab-only GGUF (tokenizer without weights), not a model", skipped=True)
    ]


def test_bad_files_become_problems_with_the_header_readers_reason(tmp_path: Path) -> None:
    good = write_gguf(tmp_path / "good.Q4_1.gguf", vocab_size=400, file_type=FILE_TYPES["Q4_1"])
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[:200])
    corrupt = tmp_path / "corrupt.gguf"
    data = bytearray(good.read_bytes())
    data[8:16] = (2**40).to_bytes(8, "little")  # absurd tensor count
    corrupt.write_bytes(bytes(data))
    text = tmp_path / "notes.gguf"
    text.write_text("this is not a model\n")
    empty = tmp_path / "empty.gguf"
    empty.touch()

    result = models_from_files(_paths(good, truncated, corrupt, text, empty), "folder")

    assert [m.id for m in result.models] == ["good:q4_1"]
    reasons = _reasons(result.problems)
    assert set(reasons) == {"truncated.gguf", "corrupt.gguf", "notes.gguf", "empty.gguf"}
    assert reasons["truncated.gguf"].startswith("truncated")
    assert "tensor" in reasons["corrupt.gguf"]
    assert reasons["notes.gguf"].startswith("not a GGUF file")
    assert reasons["empty.gguf"] == "empty file (0 bytes)"
    assert not any(p.skipped for p in result.problems)


def test_walk_survives_broken_links_and_symlink_loops(tmp_path: Path) -> None:
    root = tmp_path / "models"
    model = write_gguf(root / "pub" / "repo" / "m.Q4_0.gguf")
    (root / "pub" / "repo" / "loop").symlink_to("..", target_is_directory=True)  # dir link to its parent's parent
    (root / "pub" / "self").symlink_to(root / "pub", target_is_directory=True)  # dir link to its own parent
    (root / "dangling.gguf").symlink_to(tmp_path / "gone.gguf")
    (root / "a.gguf").symlink_to("b.gguf")
    (root / "b.gguf").symlink_to("a.gguf")
    (root / "dangling-readme").symlink_to(tmp_path / "gone")  # not named like a model: not our business
    (root / "alias").symlink_to(root / "pub", target_is_directory=True)  # same folder twice: read once

    problems: list[ScanProblem] = []
    found = walk_files(str(root), "folder", problems, want=lambda name: name.endswith(".gguf"))

    assert found == [str(model)]
    reasons = _reasons(problems)
    assert reasons["dangling.gguf"].startswith("broken symlink")
    assert reasons["a.gguf"] == reasons["b.gguf"] == "symlink loop"
    assert reasons["loop"] == f"symlink loop: points back to {root / 'pub'}"
    assert reasons["self"] == f"symlink loop: points back to {root / 'pub'}"
    assert len(problems) == 5


_UNREADABLE_SCAN = """
import json, sys
from app.core.catalog.discovery.files import models_from_files, walk_files
problems = []
found = walk_files(sys.argv[1], "folder", problems, want=lambda name: name.endswith(".gguf"))
result = models_from_files(found, "folder")
print(json.dumps({"found": found, "problems": [[p.path, p.reason] for p in problems + result.problems]}))
"""


def _drop_dac_override() -> None:
    """In the child before exec: take away root's power to read through permissions (Linux capabilities)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
    for cap in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_unreadable_folder_and_file_are_problems(tmp_path: Path) -> None:
    # Root reads through chmod 000, so as root the scan runs in a child without CAP_DAC_OVERRIDE.
    as_root = os.geteuid() == 0
    root = tmp_path
    locked_file = root / "open" / "secret.gguf"
    try:
        write_gguf(root / "open" / "fine.gguf")
        write_gguf(locked_file)
        write_gguf(root / "locked" / "hidden.gguf")
        locked_file.chmod(0)
        (root / "locked").chmod(0)
        try:
            child = subprocess.run(
                [sys.executable, "-c", _UNREADABLE_SCAN, str(root)],
                cwd=Path(__file__).resolve().parent.parent,
                capture_output=True, text=True, timeout=60,
                preexec_fn=_drop_dac_override if as_root else None,
            )
        except subprocess.SubprocessError as exc:
            pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE to stage unreadable files: {exc}")
        assert child.returncode == 0, child.stderr
        report = json.loads(child.stdout)
    finally:
        (root / "locked").chmod(0o755)
        locked_file.chmod(0o644)
    assert report["found"] == [str(root / "open" / "fine.gguf"), str(root / "open" / "secret.gguf")]
    assert report["problems"] == [
        [str(root / "locked"), "cannot read folder: Permission denied"],
        [str(root / "open" / "secret.gguf"), "permission denied: the file is not readable"],
    ]
