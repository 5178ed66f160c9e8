"""The Models tab on a real Engine (temp SWITCHBOARD_HOME, the embedded default model), on the app's qasync loop."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402
import pytest  # noqa: E402
from PySide6.QtCore import Qt, QTimer  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QStyle, QStyleOptionViewItem  # noqa: E402

from app.core.config import Config  # noqa: E402
from app.ui.app import Desktop  # noqa: E402
from app.ui.models.panel import ModelsPanel  # noqa: E402
from app.ui.models.table import COLUMN, ID_ROLE, ModelsTableModel  # noqa: E402
from tests.support.gguf_files import FILE_TYPES, write_gguf  # noqa: E402
from tests.support.qt_loop import engine_of, run, until

DEFAULT_ID = "smollm2-135m-instruct:q4_1"


@pytest.fixture
def models_dir(tmp_path: Path, default_model: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "smol-copy.Q4_1.gguf").symlink_to(default_model)
    write_gguf(folder / "Qwen2.5-0.5B-Instruct-Q8_0.gguf", arch="qwen2", name="Qwen2.5 0.5B Instruct",
               file_type=FILE_TYPES["Q8_0"], context_length=32768, chat_template="{{ messages }}")
    write_gguf(folder / "nomic-embed-text-v1.5.f16.gguf", arch="nomic-bert", name="nomic-embed-text",
               file_type=FILE_TYPES["F16"], pooling_type=1, context_length=2048)
    return folder


@pytest.fixture
def desktop(qapp: object, sb_home: Path, models_dir: Path) -> Iterator[Desktop]:
    d = Desktop(Config(port=0, discovery=False, model_dirs=[str(models_dir)]))
    yield d
    d.close_loop()


def cell(model: ModelsTableModel, model_id: str, column: str) -> str:
    return model.index(model.row_of(model_id), COLUMN[column]).data()


def test_table_rows_after_a_scan(desktop: Desktop, qtmodeltester: object) -> None:
    engine = engine_of(desktop)
    model = ModelsTableModel(desktop.services, interval_ms=100)
    assert model.rowCount() == 0
    inserted: list[tuple[int, int]] = []
    model.rowsInserted.connect(lambda _parent, first, last: inserted.append((first, last)))
    run(desktop, engine.rescan())
    run(desktop, until(lambda: model.rowCount() == 4))
    assert inserted == [(0, 3)]  # one insertion for the whole scan, by the timer
    ids = {model.index(r, 0).data(ID_ROLE) for r in range(model.rowCount())}
    assert ids == {DEFAULT_ID, "smol-copy:q4_1", "qwen2.5-0.5b-instruct:q8_0", "nomic-embed-text-v1.5:f16"}

    assert cell(model, DEFAULT_ID, "name") == f"{DEFAULT_ID}  (default)"
    assert cell(model, DEFAULT_ID, "source") == "embedded"
    assert cell(model, "smol-copy:q4_1", "source") == "folder"
    qwen = "qwen2.5-0.5b-instruct:q8_0"
    assert (cell(model, qwen, "architecture"), cell(model, qwen, "quantization")) == ("qwen2", "Q8_0")
    assert cell(model, qwen, "context") == "32,768"
    assert "chat" in cell(model, qwen, "capabilities")
    assert "embeddings" in cell(model, "nomic-embed-text-v1.5:f16", "capabilities")
    assert cell(model, DEFAULT_ID, "size").endswith("MiB")
    assert cell(model, DEFAULT_ID, "health") == "unknown"
    assert cell(model, DEFAULT_ID, "state") == "unloaded"
    assert cell(model, DEFAULT_ID, "requests") == "0"
    assert cell(model, DEFAULT_ID, "last_used") == "never"
    badge = model.index(model.row_of(DEFAULT_ID), COLUMN["health"]).data(Qt.ItemDataRole.DecorationRole)
    assert not badge.isNull()
    qtmodeltester.check(model)  # type: ignore[attr-defined]

    # A registry edit only marks the model dirty; the next tick sends one dataChanged for that row.
    changed: list[int] = []
    model.dataChanged.connect(lambda top, _bottom, _roles: changed.append(top.row()))
    engine.registry.set_enabled(qwen, False)
    engine.registry.set_aliases(qwen, ["qwen"])
    assert changed == []
    run(desktop, until(lambda: changed))
    assert changed == [model.row_of(qwen)]
    index = model.index(model.row_of(qwen), COLUMN["name"])
    assert index.data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Unchecked
    qtmodeltester.check(model)  # type: ignore[attr-defined]
    model.detach()


def test_toggling_enabled_in_the_view_changes_the_registry(desktop: Desktop, qtbot: object) -> None:
    engine = engine_of(desktop)
    run(desktop, engine.rescan())
    panel = ModelsPanel(desktop.services)
    qtbot.add_widget(panel)  # type: ignore[attr-defined]
    qwen = "qwen2.5-0.5b-instruct:q8_0"
    # The check box in the name column, through the view's (sorting, filtering) proxy.
    source_index = panel.model.index(panel.model.row_of(qwen), COLUMN["name"])
    index = panel.proxy.mapFromSource(source_index)
    assert panel.proxy.setData(index, Qt.CheckState.Unchecked.value, Qt.ItemDataRole.CheckStateRole)
    assert engine.registry.get(qwen).enabled is False
    assert qwen not in {e.id for e in desktop.services.models.available()}
    # A click on the check box in the view.
    panel.show()
    rect = panel.table.visualRect(index)
    style = panel.table.style()
    option = QStyleOptionViewItem()
    option.rect = rect
    option.features |= QStyleOptionViewItem.ViewItemFeature.HasCheckIndicator
    check = style.subElementRect(QStyle.SubElement.SE_ItemViewItemCheckIndicator, option, panel.table)
    QTest.mouseClick(panel.table.viewport(), Qt.MouseButton.LeftButton, pos=check.center())
    assert engine.registry.get(qwen).enabled is True
    QTest.mouseClick(panel.table.viewport(), Qt.MouseButton.LeftButton, pos=check.center())
    assert engine.registry.get(qwen).enabled is False
    # The toolbar action on the selected row.
    assert panel.select(qwen)
    assert panel.act_enable.isChecked() is False
    panel.act_enable.trigger()
    assert engine.registry.get(qwen).enabled is True
    assert panel.act_enable.isChecked() is True
    assert index.data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Checked


def test_filter_aliases_capabilities_default_and_pin(desktop: Desktop, qtbot: object) -> None:
    engine = engine_of(desktop)
    run(desktop, engine.rescan())
    panel = ModelsPanel(desktop.services)
    qtbot.add_widget(panel)  # type: ignore[attr-defined]
    panel.filter.setText("QWEN")
    assert panel.proxy.rowCount() == 1
    panel.filter.setText("embeddings")  # capabilities are searched too
    assert [panel.proxy.index(r, 0).data(ID_ROLE) for r in range(panel.proxy.rowCount())] == [
        "nomic-embed-text-v1.5:f16"]
    panel.filter.clear()
    assert panel.proxy.rowCount() == 4

    qwen = "qwen2.5-0.5b-instruct:q8_0"
    assert panel.apply_aliases(qwen, "qwen, small-chat ")
    assert engine.registry.resolve("small-chat").id == qwen
    assert not panel.apply_aliases(qwen, "auto")  # reserved: refused, said in the message line
    assert "auto" in panel.message.text()
    assert engine.registry.get(qwen).aliases == ["qwen", "small-chat"]
    assert panel.apply_capabilities(qwen, "chat, code, cjk_nlp")
    assert engine.registry.get(qwen).capabilities == ["chat", "code", "cjk_nlp"]
    assert panel.apply_capabilities(qwen, "")  # empty: back to the inferred tags
    assert engine.registry.get(qwen).capabilities_override is None
    assert panel.set_default(qwen) and engine.registry.default_id == qwen
    assert cell(panel.model, qwen, "name").endswith("(default)")
    assert panel.set_pinned(qwen, True) and engine.pool.is_pinned(qwen)
    assert panel.select(qwen) and panel.act_pin.isChecked()
    panel.act_pin.trigger()
    assert not engine.pool.is_pinned(qwen)


def test_parallel_is_edited_in_the_panel_and_shown_with_the_slots(desktop: Desktop, qtbot: object) -> None:
    from app.ui.models.details import details_html

    engine = engine_of(desktop)
    run(desktop, engine.rescan())
    panel = ModelsPanel(desktop.services)
    qtbot.add_widget(panel)  # type: ignore[attr-defined]
    qwen = "qwen2.5-0.5b-instruct:q8_0"
    assert panel.select(qwen) and panel.act_parallel.isEnabled()
    assert panel.apply_parallel(qwen, " 6 ")
    assert engine.registry.get(qwen).parallel == 6
    assert "Parallel\n6 requests at a time, set to 6\n" in panel.details.toPlainText()
    assert not panel.apply_parallel(qwen, "many") and "many" in panel.message.text()
    assert not panel.apply_parallel(qwen, "65") and "between 1 and 64" in panel.message.text()
    assert engine.registry.get(qwen).parallel == 6
    assert panel.apply_parallel(qwen, "")  # empty: back to the server's default
    assert engine.registry.get(qwen).parallel is None
    assert "the server's default" in panel.details.toPlainText()
    info = desktop.services.models.info(qwen)
    slots = [{"busy": True, "tokens": 1200}, *({"busy": True, "tokens": 40} for _ in range(3))]
    worker = {"replica": 0, "pid": 1, "state": "loaded", "memory_bytes": 0, "parallel": 4, "in_flight": 6,
              "slots": slots, "waiting": 0}
    text = details_html({**info, "state": "loaded", "workers": [worker]}, engine.pool.budget)
    assert "4 of 4 slots busy, 2 waiting (tokens held: 1,200*, 40*, 40*, 40*; * busy)" in text
    assert "applies at the next load" in text


def test_details_show_gguf_metadata_and_whether_it_fits(desktop: Desktop, qtbot: object) -> None:
    engine = engine_of(desktop)
    run(desktop, engine.rescan())
    panel = ModelsPanel(desktop.services)
    qtbot.add_widget(panel)  # type: ignore[attr-defined]
    assert panel.select("qwen2.5-0.5b-instruct:q8_0")
    text = panel.details.toPlainText()
    assert "GGUF metadata" in text and "qwen2" in text and "32,768" in text and "Q8_0" in text
    assert "fits" in text and "won't fit" not in text
    assert "GPU:" not in text, "no GPU here: nothing is offloaded"
    engine.pool.budget = 1024
    assert panel.select(DEFAULT_ID)
    assert "won't fit" in panel.details.toPlainText()


def test_details_say_what_goes_to_the_gpu(desktop: Desktop) -> None:
    from app.ui.models.details import details_html

    engine = engine_of(desktop)
    run(desktop, engine.rescan())
    info = desktop.services.models.info(DEFAULT_ID)
    assert info["gpu_layers"] == 0 and info["vram_bytes"] == 0
    whole = details_html({**info, "gpu_layers": -1, "vram_bytes": 200 * 2**20}, engine.pool.budget)
    assert "GPU: every layer (about 200.0 MiB of VRAM)" in whole
    assert "GPU: 12 layers" in details_html({**info, "gpu_layers": 12, "vram_bytes": 0}, engine.pool.budget)


def test_add_folder_rescans_with_a_progress_bar(desktop: Desktop, qtbot: object, tmp_path: Path,
                                                 sb_home: Path) -> None:
    engine = engine_of(desktop)
    run(desktop, engine.rescan())
    panel = ModelsPanel(desktop.services)
    qtbot.add_widget(panel)  # type: ignore[attr-defined]
    panel.show()
    more = tmp_path / "more"
    write_gguf(more / "Phi-3-mini-Q4_K_M.gguf", arch="phi3", file_type=FILE_TYPES["Q4_K_M"])

    async def add() -> None:
        task = panel.add_folder(str(more))
        assert panel.progress.isVisible() and not panel.add_folder_button.isEnabled()
        await task

    run(desktop, add())
    assert not panel.progress.isVisible() and panel.add_folder_button.isEnabled()
    assert panel.model.row_of("phi-3-mini:q4_k_m") >= 0
    assert str(more) in engine.config.model_dirs
    assert str(more) in Config.load().model_dirs  # remembered in config.json
    assert "1 new" in panel.message.text()


@pytest.mark.slow
def test_load_and_unload_through_the_panel_start_and_stop_a_real_worker(desktop: Desktop, qtbot: object) -> None:
    engine = engine_of(desktop)
    run(desktop, engine.rescan())
    panel = ModelsPanel(desktop.services)
    qtbot.add_widget(panel)  # type: ignore[attr-defined]
    panel.show()
    assert panel.select(DEFAULT_ID)
    assert panel.act_load.isEnabled() and not panel.act_unload.isEnabled()
    ticks: list[float] = []
    timer = QTimer(interval=20)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start()

    async def load() -> int:
        panel.act_load.trigger()  # returns at once: the load runs as a task on the loop
        assert panel.progress.isVisible()
        await until(lambda: engine.pool.worker(DEFAULT_ID) is not None and panel.busy_tasks == 0)
        return engine.pool.worker(DEFAULT_ID).pid  # type: ignore[union-attr]

    started = time.monotonic()
    pid = run(desktop, load())
    loading_s = time.monotonic() - started
    timer.stop()
    assert psutil.pid_exists(pid)  # type: ignore[arg-type]
    # The Qt thread kept turning while the worker loaded.
    assert len(ticks) >= 0.5 * loading_s / 0.02
    assert cell(panel.model, DEFAULT_ID, "state") == "loaded"
    assert cell(panel.model, DEFAULT_ID, "health") == "healthy"
    assert "Worker 0" in panel.details.toPlainText()
    assert panel.act_unload.isEnabled() and not panel.act_load.isEnabled()

    async def unload() -> None:
        panel.act_unload.trigger()
        await until(lambda: not engine.pool.loaded() and panel.busy_tasks == 0)

    run(desktop, unload())
    run(desktop, until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"))  # type: ignore[arg-type]
    assert cell(panel.model, DEFAULT_ID, "state") == "unloaded"
    assert panel.act_load.isEnabled()
