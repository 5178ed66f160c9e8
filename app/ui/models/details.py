"""The Models tab's details pane: one model's info (Services.models.info, the API's model_info) as HTML, with the
last lines of its worker log (Services.models.details) once they are read."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from app.ui.models.table import human_bytes, when

RETRY_LINK = "retry"  # the href of the link that loads a model that failed to load again

_METADATA_LABELS = (
    ("general_name", "Name in file"),
    ("architecture", "Architecture"),
    ("size_label", "Size label"),
    ("parameter_count", "Parameters"),
    ("quantization", "Quantization"),
    ("context_length", "Trained context"),
    ("embedding_length", "Embedding length"),
    ("block_count", "Blocks"),
    ("head_count", "Heads"),
    ("head_count_kv", "KV heads"),
    ("has_chat_template", "Chat template"),
    ("tool_style", "Template's tool calls"),
    ("pooling_type", "Pooling type"),
)


def details_html(info: dict[str, Any], budget: int, log_tail: Sequence[str] = ()) -> str:
    esc = html.escape

    def row(label: str, value: Any) -> str:
        return f"<tr><td style='color:#666;padding-right:10px'>{esc(label)}</td><td>{esc(str(value))}</td></tr>"

    meta = info["metadata"] or {}
    parts = [f"<h3 style='margin-bottom:2px'>{esc(info['id'])}</h3>",
             f"<div style='color:#666'>{esc(info['display_name'])}</div>"]
    if info["load_failure"]:  # the reason is the health's
        parts.append("<p style='color:#c62828'>It cannot load (see Health below); it is not tried again until its "
                     "file or llama.cpp changes. "
                     f"<a href='{RETRY_LINK}'>Retry loading</a></p>")
    if info["estimate_bytes"] is None:
        parts.append("<p>Remote backend: uses no local memory.</p>")
    else:
        verdict = ("<b style='color:#2e7d32'>fits</b>" if info["fits"]
                   else "<b style='color:#c62828'>won't fit</b>")
        parts.append(f"<p>Memory estimate: <b>{human_bytes(info['estimate_bytes'])}</b> of a "
                     f"{human_bytes(budget)} budget — {verdict}</p>")
        if info["gpu_layers"]:
            layers = "every layer" if info["gpu_layers"] < 0 else f"{info['gpu_layers']} layers"
            vram = f" (about {human_bytes(info['vram_bytes'])} of VRAM)" if info["vram_bytes"] else ""
            parts.append(f"<p>GPU: {layers}{vram}</p>")
    flags = [f for f, on in (("enabled", info["enabled"]), ("disabled", not info["enabled"]),
                             ("default", info["default"]), ("pinned", info["pinned"]),
                             ("files missing", info["missing"])) if on]
    table = [row("State", info["state"]), row("Health", info["health"] + (
        f" — {info['health_reason']}" if info["health_reason"] else "")), row("Flags", ", ".join(flags))]
    table += [row("Capabilities", ", ".join(info["capabilities"]) +
                  (" (edited)" if info["capabilities_edited"] else "")),
              row("Aliases", ", ".join(info["aliases"]) or "—"),
              *([row("Parallel", _parallel(info))] if info["parallel_effective"] is not None else []),
              row("Requests served", info["use_count"]), row("Last used", when(info["last_used"])),
              row("Source", info["source"]), row("Path", info["path"])]
    if len(info["paths"]) > 1:
        table.append(row("Also at", ", ".join(p for p in info["paths"] if p != info["path"])))
    if info["projector"]:
        table.append(row("Projector", info["projector"]))
    if info["versions"]:
        table.append(row("Other versions", ", ".join(info["versions"])))
    for worker in info["workers"]:
        table.append(row(f"Worker {worker['replica']}",
                         f"{worker['state']}, pid {worker['pid']}, {human_bytes(worker['memory_bytes'])}, "
                         f"{_slots(worker)}"))
    parts.append("<table cellspacing='0' cellpadding='1'>" + "".join(table) + "</table>")
    gguf = [row(label, _fmt(meta[key])) for key, label in _METADATA_LABELS if meta.get(key) is not None]
    if gguf:
        parts.append("<h4 style='margin-bottom:2px'>GGUF metadata</h4>")
        parts.append("<table cellspacing='0' cellpadding='1'>" + "".join(gguf) + "</table>")
    if info["remote"]:
        parts.append("<h4>Remote</h4><table>" + "".join(row(k, v) for k, v in info["remote"].items()) + "</table>")
    if log_tail:
        text = esc("\n".join(log_tail))
        parts.append("<h4 style='margin-bottom:2px'>Worker log (last lines)</h4>"
                     f"<pre style='font-size:small'>{text}</pre>")
    return "".join(parts)


def _parallel(info: dict[str, Any]) -> str:
    """How many requests it decodes together, whose choice that is, and when a change takes effect."""
    count = info["parallel_effective"]
    chosen = "the server's default" if info["parallel"] is None else f"set to {info['parallel']}"
    loaded = " (a change applies at the next load)" if info["state"] != "unloaded" else ""
    return f"{count} request{'' if count == 1 else 's'} at a time, {chosen}{loaded}"


def _slots(worker: dict[str, Any]) -> str:
    """Its slots, busy and idle, what each holds, and the requests waiting for one (a worker runs up to
    `parallel` at a time; the rest wait in the server's queue or the worker's)."""
    slots, in_flight = worker["parallel"], worker["in_flight"]
    if not slots:  # a remote backend, or a worker not placed yet
        return f"{in_flight} in flight"
    reported = worker["slots"]
    busy = sum(s["busy"] for s in reported) if reported else min(in_flight, slots)
    waiting = f", {in_flight - busy} waiting" if in_flight > busy else ""
    held = ""
    if any(s["tokens"] for s in reported):
        held = " (tokens held: " + ", ".join(f"{s['tokens']:,}{'*' if s['busy'] else ''}" for s in reported) + \
            "; * busy)"
    return f"{busy} of {slots} slots busy{waiting}{held}"


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and abs(value) >= 1000:
        return f"{value:,}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)

