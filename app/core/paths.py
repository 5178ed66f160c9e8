"""Where Switchboard keeps its state: the platform's dirs, or all of it under SWITCHBOARD_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "switchboard"


def _home() -> Path | None:
    value = os.environ.get("SWITCHBOARD_HOME")
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    home = _home()
    path = home / "data" if home else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_dir() -> Path:
    home = _home()
    path = home / "config" if home else Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_path() -> Path:
    return data_dir() / "switchboard.sqlite3"


def config_path() -> Path:
    return config_dir() / "config.json"
