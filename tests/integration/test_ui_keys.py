"""The Server tab's API keys: listed, added (the secret shown once, to copy) and revoked, through Services.keys."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from typing import Any

from PySide6.QtCore import QItemSelectionModel, QObject, Signal
from PySide6.QtGui import QGuiApplication

from app.core.engine import Engine
from app.core.keys import KeySpec
from app.core.services import Services
from app.ui.server.keys import KeysBox, KeysModel
from app.ui.server.panel import ServerPanel


def cells(box: KeysBox) -> list[list[Any]]:
    model = box.model
    return [[model.index(r, c).data() for c in range(model.columnCount())] for r in range(model.rowCount())]


def select(box: KeysBox, row: int) -> None:
    box.view.selectionModel().select(box.model.index(row, 0), QItemSelectionModel.SelectionFlag.ClearAndSelect
                                     | QItemSelectionModel.SelectionFlag.Rows)


def test_add_shows_the_secret_once_and_lists_the_key(qtbot: Any, engine: Engine) -> None:
    services = Services(engine)
    box = KeysBox(services)
    qtbot.add_widget(box)
    box.show()
    assert box.model.rowCount() == 0 and not box.revoke_button.isEnabled()
    assert box.scope_field.currentText() == "inference"
    qtbot.keyClicks(box.name_field, "laptop")
    box.tokens_field.setValue(20_000)
    box.add_button.click()
    assert box.secret_row.isVisible() and "'laptop'" in box.secret_label.text()
    secret = box.secret_field.text()
    key = services.keys.identify(secret.encode())
    assert key is not None and (key.name, key.scope, key.limits.tokens_per_hour) == ("laptop", "inference", 20_000)
    box.copy_secret_button.click()
    assert QGuiApplication.clipboard().text() == secret
    assert box.name_field.text() == "" and box.tokens_field.value() == 0, "the form is ready for the next key"
    assert cells(box) == [["laptop", "inference", "20,000", "no limit", "0 tokens, 0 requests", "never"]]
    assert secret not in str(cells(box))

    box.scope_field.setCurrentText("admin")
    qtbot.keyClicks(box.name_field, "ops")
    box.add_button.click()
    assert "'ops'" in box.secret_label.text() and box.secret_field.text() != secret
    assert [row[:3] for row in cells(box)] == [["laptop", "inference", "20,000"], ["ops", "admin", "no limit"]]
    box.hide()
    assert box.secret_field.text() == "", "leaving the tab forgets the secret"


def test_errors_are_shown_and_nothing_is_added(qtbot: Any, engine: Engine) -> None:
    services = Services(engine)
    services.keys.add(KeySpec.parse(name="taken"))
    box = KeysBox(services)
    qtbot.add_widget(box)
    box.show()
    for name, why in (("taken", "exists already"), ("has space", "name"), ("", "name")):
        box.name_field.setText(name)
        box.add_button.click()
        assert box.error.isVisible() and why in box.error.text(), name
        assert not box.secret_row.isVisible()
    assert [row[0] for row in cells(box)] == ["taken"]


def test_revoke_the_selected_key(qtbot: Any, engine: Engine) -> None:
    services = Services(engine)
    box = KeysBox(services)
    qtbot.add_widget(box)
    box.show()
    for name in ("alpha", "beta"):
        box.name_field.setText(name)
        box.add_button.click()
    beta_secret = box.secret_field.text()
    select(box, 1)
    assert box.selected() == "beta" and box.revoke_button.isEnabled()
    box.revoke_button.click()
    assert [row[0] for row in cells(box)] == ["alpha"]
    assert services.keys.identify(beta_secret.encode()) is None
    assert not box.secret_row.isVisible(), "the revoked key's secret is not left on screen"
    assert not box.revoke_button.isEnabled()


def test_the_panel_shows_keys_used_by_requests(qtbot: Any, engine: Engine) -> None:
    services = Services(engine)
    panel = ServerPanel(services, StoppedController(engine))
    qtbot.add_widget(panel)
    panel.show()
    _, secret = services.keys.add(KeySpec.parse(name="busy", requests_per_hour=10))
    services.keys.identify(secret.encode())  # as the Guard does for a request
    engine.quota.record("some-model", "busy", 42)
    with qtbot.waitSignal(panel.keys_box.model.modelReset, timeout=3000):
        pass  # the panel's 1 s timer
    assert cells(panel.keys_box)[0][:5] == ["busy", "inference", "no limit", "10", "42 tokens, 1 requests"]
    assert cells(panel.keys_box)[0][5] != "never"


class StoppedController(QObject):
    """The server controller's interface, never started."""

    state_changed = Signal(bool, str, str)

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.config = engine.config
        self.running = False
        self.url = ""


def test_a_stored_admin_key_lets_the_server_listen_beyond_loopback(qtbot: Any, engine: Engine) -> None:
    services = Services(engine)
    panel = ServerPanel(services, StoppedController(engine))
    qtbot.add_widget(panel)
    services.keys.add(KeySpec.parse(name="app"))
    panel.host_field.setText("0.0.0.0")
    panel.apply_button.click()
    assert "admin key" in panel.settings_message.text() and engine.config.host == "127.0.0.1"
    services.keys.add(KeySpec.parse(name="ops", scope="admin"))
    panel.apply_button.click()
    assert engine.config.host == "0.0.0.0" and engine.config.api_key is None


def test_keys_model(qtmodeltester: Any) -> None:
    model = KeysModel()
    rows = [{"name": n, "scope": "admin", "created": 1.0, "last_used": None, "tokens_per_hour": None,
             "requests_per_hour": 5, "usage": {"requests": 1, "tokens": 2}} for n in ("a", "b")]
    model.set_rows(rows)
    qtmodeltester.check(model, force_py=True)
