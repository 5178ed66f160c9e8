"""Render the SVG masters in resources/ into the window's packaged icons, app/ui/icons/.

    .venv/bin/python packaging/render_icons.py

Writes app/ui/icons/switchboard-{16,32,64,128,256}.png, app/ui/icons/tray-{running,stopped}-{16,32,64}.png and a
copy of each SVG (the packaged scalable icon): resources/ stays the one place the icons are edited.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QGuiApplication, QImage, QPainter  # noqa: E402
from PySide6.QtSvg import QSvgRenderer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "resources"
ICONS_DIR = ROOT / "app" / "ui" / "icons"
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
        svg = RESOURCES / f"{name}.svg"
        written = [Path(shutil.copyfile(svg, ICONS_DIR / svg.name))]
        for size in sizes:
            out = ICONS_DIR / f"{name}-{size}.png"
            render(svg, size, out)
            written.append(out)
        for out in written:
            print(f"{out.relative_to(ROOT)}  {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
