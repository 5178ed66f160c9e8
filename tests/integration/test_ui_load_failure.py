"""The Models tab explains a model llama.cpp cannot load and retries it: a real Engine and worker, Qt offscreen."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QUrl  # noqa: E402

from app.core.config import Config  # noqa: E402
from app.ui.app import Desktop  # noqa: E402
from app.ui.models.details import RETRY_LINK  # noqa: E402
from app.ui.models.panel import ModelsPanel  # noqa: E402
from tests.support.gguf_files import write_gguf  # noqa: E402
from tests.support.qt_loop import engine_of, run, until  # noqa: E402

FOO_ID = "foo-model:gguf"


@pytest.fixture
def desktop(qapp: object, sb_home: Path, tmp_path: Path) -> Iterator[Desktop]:
    # llama.cpp reads the architecture first: a small file is enough for it to refuse 'foo'.
    write_gguf(tmp_path / "models" / "Foo-Model.gguf", arch="foo", name="Foo", chat_template="{{ messages }}")
    d = Desktop(Config(port=0, discovery=False, model_dirs=[str(tmp_path / "models")]))
    yield d
    d.close_loop()


def test_details_explain_a_model_that_cannot_load_and_retry_it(desktop: Desktop, qtbot: object) -> None:
    engine = engine_of(desktop)
    run(desktop, engine.rescan())
    panel = ModelsPanel(desktop.services)
    qtbot.add_widget(panel)  # type: ignore[attr-defined]
    panel.show()
    assert panel.select(FOO_ID)
    text = panel.details.toPlainText()
    assert "unhealthy — llama.cpp (llama-cpp-python" in text and "cannot load architecture 'foo'" in text
    assert "not tried again until its file or llama.cpp changes. Retry loading" in text
    assert "Worker log" not in text  # never started: no log yet

    panel.details.anchorClicked.emit(QUrl(RETRY_LINK))  # the link in the details
    run(desktop, until(lambda: panel.busy_tasks == 0 and "Worker log" in panel.details.toPlainText()))
    text = panel.details.toPlainText()
    assert "unhealthy — Model 'foo-model:gguf' failed to load" in text and "Retry loading" in text
    assert text.count("unknown model architecture: 'foo'") == 2  # the health's reason, and the log's last lines
    assert "unknown model architecture: 'foo'" in panel.message.text()
    assert engine.pool.worker(FOO_ID) is None
