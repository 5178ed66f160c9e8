"""What `switchboard scan` prints: the table and the --json dict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.core.catalog.discovery.embedded import scan_embedded
from app.core.catalog.discovery.found import ScanResult
from app.core.catalog.discovery.report import format_table, human_size, to_json
from app.core.catalog.discovery.scan import scan_paths
from tests.support.gguf_files import write_gguf


def _result(tmp_path: Path) -> ScanResult:
    found = scan_embedded()
    write_gguf(tmp_path / "Embed-F16.gguf", arch="bert", pooling_type=1, file_type=1, chat_template=None)
    (tmp_path / "broken.gguf").write_text("nope")
    more = scan_paths([tmp_path])
    return ScanResult(found.models + more.models, found.problems + more.problems)


def test_table_lists_models_then_problems(tmp_path: Path, default_model: Path) -> None:
    lines = format_table(_result(tmp_path)).splitlines()
    assert lines[0].split() == ["ID", "SOURCE", "PATH", "ARCHITECTURE", "QUANTIZATION", "SIZE", "CONTEXT"]
    assert lines[1].split() == [
        "smollm2-135m-instruct:q4_1", "embedded", str(default_model), "llama", "Q4_1", "98.4", "MB", "8192"
    ]
    assert lines[2].split()[:5] == ["embed:f16", "folder", str(tmp_path / "Embed-F16.gguf"), "bert", "F16"]
    assert lines[3:] == [
        "",
        "Problems (1):",
        f"  {tmp_path / 'broken.gguf'}",
        "      error [folder]: not a GGUF file (starts with b'nope', expected b'GGUF')",
    ]


def test_empty_table() -> None:
    assert format_table(ScanResult()) == "No models found."


def test_json_has_every_field_and_serialises(tmp_path: Path, default_model: Path) -> None:
    data = json.loads(json.dumps(to_json(_result(tmp_path))))
    smol, embed = data["models"]
    assert smol == {
        "id": "smollm2-135m-instruct:q4_1",
        "name": "smollm2-135m-instruct",
        "tag": "q4_1",
        "display_name": smol["display_name"],
        "source": "embedded",
        "path": str(default_model),
        "parts": [str(default_model)],
        "projector": None,
        "architecture": "llama",
        "quantization": "Q4_1",
        "size": default_model.stat().st_size,
        "size_human": "98.4 MB",
        "context_length": 8192,
        "parameter_count": smol["parameter_count"],
        "has_chat_template": True,
        "pooling_type": None,
    }
    assert smol["display_name"] and smol["parameter_count"] > 100_000_000
    assert (embed["pooling_type"], embed["has_chat_template"]) == (1, False)
    [problem] = data["problems"]
    assert problem["path"] == str(tmp_path / "broken.gguf") and problem["skipped"] is False


@pytest.mark.parametrize(("size", "text"), [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (98_362_432, "98.4 MB"),
                                            (4_920_000_000, "4.9 GB"), (1_500_000_000_000, "1.5 TB")])
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text
