"""Switchboard benchmarks: `python -m bench` runs every bench/bench_*.py module's main()."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def save_results(name: str, markdown: str, data: Any) -> None:
    """Write bench/results/NAME.md (what the README quotes) and NAME.json (every figure)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(markdown.rstrip("\n") + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
