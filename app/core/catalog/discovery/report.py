"""What `switchboard scan` prints: a table for people, a dict for --json."""

from __future__ import annotations

from typing import Any

from app.core.catalog.discovery.found import FoundModel, ScanResult

_COLUMNS = ("ID", "SOURCE", "PATH", "ARCHITECTURE", "QUANTIZATION", "SIZE", "CONTEXT")


def human_size(size: int) -> str:
    """Decimal units, as download pages and file managers show model sizes: 98362432 -> "98.4 MB"."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def _row(model: FoundModel) -> tuple[str, ...]:
    header = model.header
    return (
        model.id,
        model.source,
        model.path,
        header.architecture or "-",
        header.quantization or "-",
        human_size(model.size),
        str(header.context_length) if header.context_length else "-",
    )


def format_table(result: ScanResult) -> str:
    lines: list[str] = []
    if result.models:
        rows = [_COLUMNS, *(_row(model) for model in result.models)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    else:
        lines.append("No models found.")
    if result.problems:
        lines += ["", f"Problems ({len(result.problems)}):"]
        for problem in result.problems:
            kind = "skipped" if problem.skipped else "error"
            lines.append(f"  {problem.path}\n      {kind} [{problem.source}]: {problem.reason}")
    return "\n".join(lines)


def to_json(result: ScanResult) -> dict[str, Any]:
    return {
        "models": [_model_json(model) for model in result.models],
        "problems": [
            {"path": p.path, "source": p.source, "reason": p.reason, "skipped": p.skipped} for p in result.problems
        ],
    }


def _model_json(model: FoundModel) -> dict[str, Any]:
    header = model.header
    return {
        "id": model.id,
        "name": model.name,
        "tag": model.tag,
        "display_name": model.display_name,
        "source": model.source,
        "path": model.path,
        "parts": list(model.parts),
        "projector": model.projector,
        "architecture": header.architecture,
        "quantization": header.quantization,
        "size": model.size,
        "size_human": human_size(model.size),
        "context_length": header.context_length,
        "parameter_count": header.parameter_count,
        "has_chat_template": header.has_chat_template,
        "pooling_type": header.pooling_type,
    }
