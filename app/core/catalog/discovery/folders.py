"""GGUF files in plain folders: ./models, ~/models, LM Studio's model folders, and folders the user adds."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from app.core.catalog.discovery.files import is_gguf_name, models_from_files, walk_files
from app.core.catalog.discovery.found import ScanProblem, ScanResult

SOURCE = "folder"
LMSTUDIO_SOURCE = "lmstudio"


@dataclass(frozen=True, slots=True)
class Folder:
    path: str
    source: str = SOURCE
    optional: bool = False  # a default location: silently nothing if it does not exist


def default_model_folders(home: str | None = None, cwd: str | None = None) -> list[Folder]:
    home = os.path.expanduser("~") if home is None else home
    cwd = os.getcwd() if cwd is None else cwd
    return [
        Folder(os.path.join(cwd, "models"), optional=True),
        Folder(os.path.join(home, "models"), optional=True),
        # LM Studio's current download folder, then the one older versions used.
        Folder(os.path.join(home, ".lmstudio", "models"), LMSTUDIO_SOURCE, optional=True),
        Folder(os.path.join(home, ".cache", "lm-studio", "models"), LMSTUDIO_SOURCE, optional=True),
    ]


def scan_folders(folders: Iterable[Folder]) -> ScanResult:
    """Every .gguf under the folders (a folder may also be a single file); never raises.

    A folder reachable twice (./models is ~/models when run from home, links between them)
    is read once, under the first folder that reaches it.
    """
    result = ScanResult()
    seen_dirs: set[str] = set()
    for folder in folders:
        paths = _gguf_paths(folder, seen_dirs, result.problems)
        found = models_from_files(paths, folder.source)
        result.models.extend(found.models)
        result.problems.extend(found.problems)
    return result


def _gguf_paths(folder: Folder, seen_dirs: set[str], problems: list[ScanProblem]) -> list[str]:
    try:
        mode = os.stat(folder.path).st_mode
    except FileNotFoundError:
        if not folder.optional:
            problems.append(ScanProblem(folder.path, folder.source, "not found"))
        return []
    except OSError as exc:
        problems.append(ScanProblem(folder.path, folder.source, f"cannot read: {exc.strerror or exc}"))
        return []
    if stat.S_ISDIR(mode):
        return walk_files(folder.path, folder.source, problems, want=is_gguf_name, seen_dirs=seen_dirs)
    if stat.S_ISREG(mode):
        return [folder.path]  # a file named explicitly is read whatever its name
    problems.append(ScanProblem(folder.path, folder.source, "not a regular file or folder"))
    return []
