"""The headless core never imports Qt: the server must run where no display or Qt exists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import app

CORE = Path(app.__file__).parent / "core"
QT = ("PySide6", "shiboken6", "qasync", "PyQt5", "PyQt6")


def test_core_modules_import_no_qt() -> None:
    modules = sorted(f"app.core.{p.relative_to(CORE).with_suffix('').as_posix().replace('/', '.')}"
                     for p in CORE.rglob("*.py") if p.name != "__init__.py")
    assert "app.core.catalog.registry" in modules
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            f"print(sorted(n for n in sys.modules if n.split('.')[0] in {QT!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
