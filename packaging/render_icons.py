"""Render resources/*.svg to the PNG sizes desktops and trays ask for.

    .venv/bin/python packaging/render_icons.py

Writes resources/switchboard-{16,32,64,128,256}.png and resources/tray-{running,stopped}-{16,32,64}.png.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QGuiApplication, QImage, QPainter  # noqa: E402
from PySide6.QtSvg import QSvgRenderer  # noqa: E402

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
APP_SIZES = (16, 32, 64, 128, 256)
TRAY_SIZES = (16, 32, 64)
ICONS = {"switchboard": APP_SIZES, "tray-running": TRAY_SIZES, "tray-stopped": TRAY_SIZES}


def render(svg: Path, size: int, out: Path) -> None:
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"{svg}: not a valid SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(painter)
    painter.end()
    if not image.save(str(out), "PNG"):
        raise SystemExit(f"cannot write {out}")


def main() -> int:
    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    for name, sizes in ICONS.items():
        for size in sizes:
            out = RESOURCES / f"{name}-{size}.png"
            render(RESOURCES / f"{name}.svg", size, out)
            print(f"{out.relative_to(RESOURCES.parent)}  {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
