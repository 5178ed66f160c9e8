"""Models pulled with Ollama: manifests name them, content-addressed blobs hold the GGUF files.

Every digest is checked against Ollama's own pattern before it becomes part of a path
(CVE-2024-37032 was path traversal through the digest), and every blob must resolve inside blobs/.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from app.core.catalog.discovery.files import expand_user, not_a_model_reason, walk_files
from app.core.catalog.discovery.found import FoundModel, ScanProblem, ScanResult
from app.core.catalog.gguf.header import GGUFError, GGUFHeader
from app.core.catalog.gguf.reader import read_header

SOURCE = "ollama"
DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
MODEL_LAYER = "application/vnd.ollama.image.model"
PROJECTOR_LAYER = "application/vnd.ollama.image.projector"
_DIGEST = re.compile(r"sha256[:-](?P<hex>[0-9a-fA-F]{64})")  # used with fullmatch only
_MAX_MANIFEST_BYTES = 1 << 20  # real manifests are ~1 kB; don't slurp a stray big file


def ollama_store(env: Mapping[str, str] | None = None, home: str | None = None) -> str:
    env = os.environ if env is None else env
    home = os.path.expanduser("~") if home is None else home
    return expand_user(env.get("OLLAMA_MODELS") or os.path.join(home, ".ollama", "models"), home)


def scan_ollama(store: str | os.PathLike[str] | None = None) -> ScanResult:
    """One model per manifest under <store>/manifests/<host>/<namespace>/<model>/<tag>; never raises."""
    store = ollama_store() if store is None else os.fspath(store)
    manifests = os.path.join(store, "manifests")
    result = ScanResult()
    if not os.path.isdir(manifests):
        return result  # Ollama never pulled anything here
    blobs = _Blobs(os.path.join(store, "blobs"), result.problems)
    for path in walk_files(manifests, SOURCE, result.problems, want=lambda name: not name.startswith(".")):
        model = _model_from_manifest(path, os.path.relpath(path, manifests), blobs, result.problems)
        if model is not None:
            result.models.append(model)
    return result


def ollama_name(host: str, namespace: str, model: str) -> str:
    """The name as `ollama list` shows it: defaults left out."""
    if host != DEFAULT_REGISTRY:
        return f"{host}/{namespace}/{model}"
    if namespace != DEFAULT_NAMESPACE:
        return f"{namespace}/{model}"
    return model


def _model_from_manifest(
    path: str, relpath: str, blobs: _Blobs, problems: list[ScanProblem]
) -> FoundModel | None:
    location = relpath.split(os.sep)
    if len(location) != 4:
        problems.append(ScanProblem(
            path, SOURCE, "not a manifest: expected manifests/<host>/<namespace>/<model>/<tag>", skipped=True
        ))
        return None
    host, namespace, model, tag = location
    layers = _read_layers(path, problems)
    if layers is None:
        return None
    model_layers = [layer for layer in layers if layer.get("mediaType") == MODEL_LAYER]
    if len(model_layers) != 1:
        problems.append(ScanProblem(path, SOURCE, f"manifest has {len(model_layers)} model layers, expected 1"))
        return None
    model_blob = blobs.read(model_layers[0], path)
    if model_blob is None:
        return None
    blob, header = model_blob
    reason = not_a_model_reason(header)
    if reason:
        problems.append(ScanProblem(path, SOURCE, f"model layer is a {reason}", skipped=True))
        return None
    # A broken projector costs vision, not the model: report it and list the model text-only.
    projectors = (blobs.read(layer, path) for layer in layers if layer.get("mediaType") == PROJECTOR_LAYER)
    projector = next((found[0] for found in projectors if found is not None), None)
    name = ollama_name(host, namespace, model)
    return FoundModel(
        name=name,
        tag=tag,
        source=SOURCE,
        path=blob,
        header=header,
        parts=[blob],
        projector=projector,
        size=header.file_size,
        display_name=header.name or name,
    )


def _read_layers(path: str, problems: list[ScanProblem]) -> list[dict[str, Any]] | None:
    try:
        with open(path, "rb") as file:
            raw = file.read(_MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        problems.append(ScanProblem(path, SOURCE, f"cannot read manifest: {exc.strerror or exc}"))
        return None
    if len(raw) > _MAX_MANIFEST_BYTES:
        problems.append(ScanProblem(path, SOURCE, "manifest is too large to be an Ollama manifest"))
        return None
    try:
        manifest = json.loads(raw)
    except ValueError:  # also covers bytes that are not UTF-8
        problems.append(ScanProblem(path, SOURCE, "manifest is not valid JSON"))
        return None
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        problems.append(ScanProblem(path, SOURCE, "manifest has no valid \"layers\" list"))
        return None
    return layers


class _Blobs:
    """Resolves manifest layers to files inside <store>/blobs, refusing anything that could escape it."""

    def __init__(self, directory: str, problems: list[ScanProblem]) -> None:
        self.directory = directory
        self.real_directory = os.path.realpath(directory)
        self.problems = problems

    def read(self, layer: dict[str, Any], manifest: str) -> tuple[str, GGUFHeader] | None:
        """The layer's blob path and header, or None with a problem naming the manifest."""
        digest, size = layer.get("digest"), layer.get("size")
        match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
        if match is None:
            return self._problem(manifest, f"invalid layer digest {digest!r} (expected sha256:<64 hex digits>)")
        if type(size) is not int or size < 0:
            return self._problem(manifest, f"layer {digest} has no valid size")
        blob = os.path.join(self.directory, f"sha256-{match['hex']}")
        try:
            real = os.path.realpath(blob, strict=True)
        except OSError:
            return self._problem(manifest, f"blob {os.path.basename(blob)} is missing")
        if os.path.commonpath([real, self.real_directory]) != self.real_directory:
            return self._problem(manifest, f"blob {os.path.basename(blob)} resolves outside the blobs folder: {real}")
        try:
            header = read_header(real)
        except GGUFError as exc:
            return self._problem(manifest, f"blob {os.path.basename(blob)}: {exc.reason}")
        if header.file_size != size:
            # A cheap stand-in for hashing the whole blob: catches truncated or swapped files.
            return self._problem(
                manifest, f"blob {os.path.basename(blob)} is {header.file_size} bytes, the manifest says {size}"
            )
        return blob, header

    def _problem(self, manifest: str, reason: str) -> tuple[str, GGUFHeader] | None:
        """Record why the manifest is skipped; None, so that `read` can return it."""
        self.problems.append(ScanProblem(manifest, SOURCE, reason))
        return None
