"""The server panel: endpoint URL and copy, start/stop and settings through the controller, the request log."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import asyncio
import json
from collections.abc import Coroutine, Iterator
from typing import Any

import httpx
import pytest
import qasync
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QGuiApplication

from app.core import paths
from app.core.config import Config
from app.core.engine import Engine
from app.core.services import Services
from app.ui.server.panel import RequestLogModel, ServerPanel
from tests.support.servers import free_port


class FakeController(QObject):
    """ServerController's interface, recording what the panel asks of it."""

    state_changed = Signal(bool, str, str)

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self._engine = engine
        self.running = False
        self.url = ""
        self.calls: list[str] = []

    @property
    def config(self) -> Config:
        return self._engine.config

    async def start(self) -> bool:
        self.calls.append("start")
        self.running, self.url = True, f"http://{self.config.host}:{self.config.port}/v1"
        self.state_changed.emit(True, self.url, "")
        return True

    async def stop(self) -> None:
        self.calls.append("stop")
        self.running, self.url = False, ""
        self.state_changed.emit(False, "", "")

    async def restart(self) -> bool:
        self.calls.append("restart")
        await self.stop()
        return await self.start()


@pytest.fixture
def loop(qapp: Any) -> Iterator[qasync.QEventLoop]:
    """The app's loop as in the window: asyncio on the Qt event loop."""
    loop = qasync.QEventLoop(qapp)
    yield loop
    loop.close()


def run(loop: qasync.QEventLoop, coro: Coroutine[Any, Any, Any]) -> Any:
    return loop.run_until_complete(coro)


def append_decision(engine: Engine, request_id: str, model: str = "alpha:q4_0") -> None:
    engine.decisions.append(request_id, endpoint="chat", model_id=model, strategy="round_robin",
                            reason="round robin: next in turn", total_score=1.0,
                            candidates=[{"model_id": model, "score": 1.0, "filtered": False, "reason": "chosen"}])


def test_url_and_copy_button(qtbot, engine: Engine, loop: qasync.QEventLoop) -> None:
    controller = FakeController(engine)
    panel = ServerPanel(Services(engine), controller)
    qtbot.add_widget(panel)
    assert panel.state_label.text() == "Stopped"
    assert panel.url == "http://127.0.0.1:8642/v1"  # where it will listen
    assert panel.start_button.isEnabled() and not panel.stop_button.isEnabled()

    async def start() -> None:
        panel.start_button.click()
        await asyncio.sleep(0.01)

    run(loop, start())
    assert controller.calls == ["start"]
    assert panel.state_label.text() == "Running"
    assert not panel.start_button.isEnabled() and panel.stop_button.isEnabled()
    controller.url = "http://127.0.0.1:9999/v1"
    controller.state_changed.emit(True, controller.url, "")
    assert panel.url == "http://127.0.0.1:9999/v1"
    # One URL per kind of client: OpenAI's base URL; Anthropic's and Ollama's clients add their own paths.
    assert [f.text() for f in panel.client_fields] == ["http://127.0.0.1:9999/v1", "http://127.0.0.1:9999",
                                                       "http://127.0.0.1:9999"]
    panel.copy_buttons[0].click()
    assert QGuiApplication.clipboard().text() == "http://127.0.0.1:9999/v1"
    panel.copy_buttons[1].click()
    assert QGuiApplication.clipboard().text() == "http://127.0.0.1:9999"
    engine.config.ollama_port = 11434  # Ollama's clients then have a port of their own
    controller.state_changed.emit(True, controller.url, "")
    assert panel.client_fields[2].text() == "http://127.0.0.1:11434"


def test_a_start_failure_is_shown(qtbot, engine: Engine) -> None:
    controller = FakeController(engine)
    panel = ServerPanel(Services(engine), controller)
    qtbot.add_widget(panel)
    panel.show()
    controller.state_changed.emit(False, "", "Cannot listen on 127.0.0.1:8642: Address already in use")
    assert panel.error_label.isVisible()
    assert "Address already in use" in panel.error_label.text()
    assert panel.start_button.isEnabled()


def test_settings_are_saved_and_the_server_restarted(qtbot, engine: Engine, loop: qasync.QEventLoop) -> None:
    controller = FakeController(engine)
    panel = ServerPanel(Services(engine), controller)
    qtbot.add_widget(panel)
    run(loop, controller.start())
    assert not panel.apply_button.isEnabled()
    qtbot.keyClicks(panel.cors_field, "http://localhost:3000, https://example.org")
    panel.port_field.setValue(9001)
    assert panel.apply_button.isEnabled()

    async def apply() -> None:
        panel.apply_button.click()
        await asyncio.sleep(0.01)

    run(loop, apply())
    assert engine.config.port == 9001
    assert engine.config.cors_origins == ["http://localhost:3000", "https://example.org"]
    saved = json.loads(paths.config_path().read_text())
    assert saved["port"] == 9001 and saved["cors_origins"] == ["http://localhost:3000", "https://example.org"]
    assert controller.calls == ["start", "restart", "stop", "start"]
    assert panel.url == "http://127.0.0.1:9001/v1"


def test_exposing_the_server_needs_an_api_key(qtbot, engine: Engine) -> None:
    controller = FakeController(engine)
    panel = ServerPanel(Services(engine), controller)
    qtbot.add_widget(panel)
    panel.host_field.setText("0.0.0.0")
    panel.apply_button.click()
    assert "API key" in panel.settings_message.text()
    assert engine.config.host == "127.0.0.1"
    panel.key_field.setText("s3cret")
    panel.apply_button.click()
    assert engine.config.host == "0.0.0.0" and engine.config.api_key == "s3cret"
    assert controller.calls == []  # stopped: saved for the next start
    assert panel.url == "http://0.0.0.0:8642/v1"


def test_request_log_shows_new_decisions(qtbot, engine: Engine) -> None:
    panel = ServerPanel(Services(engine), FakeController(engine))
    qtbot.add_widget(panel)
    panel.show()
    model = panel.log_model
    assert model.rowCount() == 0
    append_decision(engine, "req-1")
    with qtbot.waitSignal(model.rowsInserted, timeout=3000):
        pass  # the 1 s timer picks it up
    assert model.rowCount() == 1
    assert [model.index(0, c).data() for c in (1, 2, 3, 4, 5, 6)] == [
        "alpha:q4_0", "round_robin", "round robin: next in turn", "…", "running…", "…"]
    assert not panel.refresh_log()  # nothing changed: nothing emitted

    engine.decisions.complete("req-1", status=200, prompt_tokens=12, completion_tokens=30, cached_tokens=8,
                              ttft_ms=120.0, duration_ms=1530.0)
    assert panel.refresh_log()
    assert [model.index(0, c).data() for c in (4, 5, 6)] == ["12 in / 30 out", "1.53 s", "200"]
    append_decision(engine, "req-2", "beta:q8_0")
    panel.refresh_log()
    assert [model.index(r, 1).data() for r in range(2)] == ["beta:q8_0", "alpha:q4_0"]  # newest first


def test_request_log_model(qtmodeltester) -> None:
    model = RequestLogModel()
    rows = [{"seq": s, "time": 1_700_000_000.0 + s, "request_id": f"r{s}", "endpoint": "chat", "model_id": "m",
             "strategy": "least_loaded", "reason": "least loaded", "retried": s == 2, "status": None,
             "prompt_tokens": None, "completion_tokens": None, "cached_tokens": None, "ttft_ms": None,
             "duration_ms": None, "error": None, "candidates": []} for s in (3, 2, 1)]
    model.set_rows(rows)
    qtmodeltester.check(model, force_py=True)
    # Newer on top and the oldest dropped, as the log scrolls.
    newer = {**rows[0], "seq": 4, "request_id": "r4"}
    assert model.set_rows([newer, *rows[:2]])
    assert [model.row(i)["seq"] for i in range(3)] == [4, 3, 2]
    assert model.index(2, 1).data() == "m (retry)"
    failed = {**rows[1], "status": 503, "error": "worker crashed", "duration_ms": 5.0}
    assert model.set_rows([newer, rows[0], failed])
    assert model.index(2, 6).data() == "503" and model.index(2, 6).data(0x03) == "worker crashed"  # ToolTipRole
    qtmodeltester.check(model, force_py=True)


@pytest.mark.slow
def test_real_controller_serves_the_shown_url(qtbot, engine: Engine, loop: qasync.QEventLoop) -> None:
    from app.ui.server.control import ServerController

    engine.config.port = free_port()
    services = Services(engine)
    controller = ServerController(services)
    panel = ServerPanel(services, controller)
    qtbot.add_widget(panel)

    async def scenario() -> int:
        panel.start_button.click()
        for _ in range(500):
            if controller.running and panel.state_label.text() == "Running":
                break
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient() as client:
            status = (await client.get(panel.url.removesuffix("/v1") + "/health")).status_code
        panel.stop_button.click()
        for _ in range(500):
            if not controller.running:
                break
            await asyncio.sleep(0.01)
        return status

    assert run(loop, scenario()) == 200
    assert panel.state_label.text() == "Stopped"
