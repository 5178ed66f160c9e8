"""Screenshots of the real window, in-process, for the README: `make screenshot` runs this under Xvfb.

The app starts as `switchboard gui --no-discovery` would, on its own temporary state (so the pictures show the
default model and nothing from this machine), loads the default model, answers a few requests through its own
server, then shows each tab in turn (QTimer-driven sleeps on the qasync loop) and saves window.grab() as
docs/screenshot-<tab>.png.

    xvfb-run -a -s "-screen 0 1600x900x24" .venv/bin/python packaging/screenshot.py [--out docs]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.ui.routing.panel import RoutingPanel

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 1480, 820
HISTORY_S = 20.0
QUESTIONS = ("What is the capital of France?", "Name three primary colours.", "Say hello in Spanish.")


def _port() -> int:
    """8642 (the default, so the pictures show the usual URL) when free, else any free port."""
    for port in (8642, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1]) if port == 0 else port
    raise RuntimeError("no free port")


async def _session(desktop: object, out: Path) -> list[Path]:
    import httpx

    from app.ui.app import Desktop

    assert isinstance(desktop, Desktop)
    await desktop.start(tray=False)
    window, models = desktop.window, desktop.services.models
    assert window is not None
    window.resize(WIDTH, HEIGHT)
    window.move(20, 20)
    default = models.resolve(models.default_id or "")
    await models.load(default.id)

    def ask(question: str) -> None:
        httpx.post(f"{desktop.controller.url}/chat/completions", timeout=120, json={
            "model": "auto", "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": question}]}).raise_for_status()

    for question in QUESTIONS:
        await asyncio.to_thread(ask, question)
    # Some memory history for the charts (sampled once a second), and a refresh of every view.
    await asyncio.sleep(HISTORY_S)
    panel = window.models_panel
    panel.select(default.id)
    window.statusBar().showMessage(desktop.found_message)
    _show_a_dry_run(window.routing_panel)
    saved = []
    for index in range(window.tabs.count()):
        window.tabs.setCurrentIndex(index)
        await asyncio.sleep(1.2)
        name = window.tabs.tabText(index).lower().replace(" ", "-")
        path = out / f"screenshot-{name}.png"
        if not window.grab().save(str(path), "PNG"):
            raise RuntimeError(f"cannot write {path}")
        saved.append(path)
    window.tabs.setCurrentIndex(0)
    return saved


def _show_a_dry_run(routing: RoutingPanel) -> None:
    """The Routing tab shows its "Try a request" page with a decision."""
    routing.tabs.setCurrentWidget(routing.try_tab)
    routing.try_tab.try_prompt.setPlainText("Write a Python function that reverses a list.")
    routing.try_tab.try_request()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNGs (default docs/)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sb-screenshot-") as tmp:
        os.environ["SWITCHBOARD_HOME"] = str(Path(tmp) / "sb")
        os.environ.pop("SWITCHBOARD_API_KEY", None)
        sys.path.insert(0, str(ROOT))
        from app.core.config import Config
        from app.ui.app import Desktop

        desktop = Desktop(Config(port=_port(), discovery=False))
        try:
            saved = desktop.run_until_complete(_session(desktop, args.out))
        finally:
            desktop.close_loop()
    for path in saved:
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}  {path.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
