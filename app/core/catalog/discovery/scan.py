"""scan(): every source at once; scan_paths(): just the files and folders given."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from app.core.catalog.architectures import load_refusal
from app.core.catalog.discovery.embedded import scan_embedded
from app.core.catalog.discovery.folders import Folder, default_model_folders, scan_folders
from app.core.catalog.discovery.found import ScanProblem, ScanResult
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
    check_architectures: bool = False,
) -> ScanResult:
    """Run the sources in order and put their findings together.

    The same model may come back from several places (one file under several Ollama tags, a
    folder linking into the HF cache): the registry decides how to merge, so nothing is dropped.
    default_folders=False leaves out ./models, ~/models and LM Studio's folders (extra_dirs only).
    home, env and cwd default to the real ones, read now: tests pass their own so that
    nothing outside their temporary folders is looked at.
    check_architectures flags each model whose architecture the installed llama.cpp cannot load: still listed,
    with its `load_refusal` set and a problem saying why (the first check of a process runs a child process).
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
    return _checked(found) if check_architectures else found


def scan_paths(paths: Iterable[PathLike], *, check_architectures: bool = False) -> ScanResult:
    """Only the given .gguf files and folders (walked recursively); a missing path is a problem."""
    found = scan_folders([Folder(os.fspath(path)) for path in paths])
    return _checked(found) if check_architectures else found


def _checked(found: ScanResult) -> ScanResult:
    """Each model whose architecture the installed llama.cpp cannot load: its `load_refusal` set, and a problem."""
    for model in found.models:
        model.load_refusal = load_refusal(model.header.architecture)
        if model.load_refusal is not None:
            found.problems.append(ScanProblem(model.path, model.source, model.load_refusal))
    return found

