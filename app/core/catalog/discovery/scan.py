"""scan(): every source at once; scan_paths(): just the files and folders given."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from app.core.catalog.discovery.embedded import scan_embedded
from app.core.catalog.discovery.folders import Folder, default_model_folders, scan_folders
from app.core.catalog.discovery.found import ScanResult
from app.core.catalog.discovery.hf_cache import hf_cache_dir, scan_hf_cache
from app.core.catalog.discovery.ollama import ollama_store, scan_ollama

SOURCES = ("embedded", "hf", "ollama", "folders")

PathLike = str | os.PathLike[str]


def scan(
    *,
    extra_dirs: Iterable[PathLike] = (),
    sources: Iterable[str] = SOURCES,
    default_folders: bool = True,
    home: PathLike | None = None,
    env: Mapping[str, str] | None = None,
    cwd: PathLike | None = None,
) -> ScanResult:
    """Run the sources in order and put their findings together.

    The same model may come back from several places (one file under several Ollama tags, a
    folder linking into the HF cache): the registry decides how to merge, so nothing is dropped.
    default_folders=False leaves out ./models, ~/models and LM Studio's folders (extra_dirs only).
    home, env and cwd default to the real ones, read now: tests pass their own so that
    nothing outside their temporary folders is looked at.
    """
    env = os.environ if env is None else env
    home = os.path.expanduser("~") if home is None else os.fspath(home)
    cwd = os.getcwd() if cwd is None else os.fspath(cwd)
    folders = [
        *(default_model_folders(home, cwd) if default_folders else []),
        *(Folder(os.fspath(path)) for path in extra_dirs),
    ]
    runners: dict[str, Callable[[], ScanResult]] = {
        "embedded": scan_embedded,
        "hf": lambda: scan_hf_cache(hf_cache_dir(env, home)),
        "ollama": lambda: scan_ollama(ollama_store(env, home)),
        "folders": lambda: scan_folders(folders),
    }
    sources = list(sources)
    unknown = [source for source in sources if source not in runners]
    if unknown:
        raise ValueError(f"unknown discovery source(s): {', '.join(unknown)}; known: {', '.join(SOURCES)}")
    found = ScanResult()
    for source in sources:
        result = runners[source]()
        found.models.extend(result.models)
        found.problems.extend(result.problems)
    return found


def scan_paths(paths: Iterable[PathLike]) -> ScanResult:
    """Only the given .gguf files and folders (walked recursively); a missing path is a problem."""
    return scan_folders([Folder(os.fspath(path)) for path in paths])

