"""What a scan finds: models, and the problems it met on the way."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.core.catalog.gguf.header import GGUFHeader


@dataclass(slots=True)
class FoundModel:
    """One runnable model as found on disk (split parts grouped, projector attached)."""

    # base name used for the id, e.g. "smollm2-135m-instruct", "smollm2", "bartowski/qwen2.5-0.5b-instruct-gguf"
    name: str
    tag: str  # quantization in lower case ("q4_1") or Ollama's tag ("latest")
    source: str  # "hf" | "ollama" | "lmstudio" | "folder" | "embedded"
    path: str  # the file to load: the single file or split part 1
    header: GGUFHeader  # header of `path`
    parts: list[str] = field(default_factory=list)  # every file of the model, part 1 first
    projector: str | None = None  # mmproj file for vision
    size: int = 0  # bytes over all parts
    display_name: str = ""
    # Why the installed llama.cpp cannot load it, known from its header alone (scan(check_architectures=True)).
    load_refusal: str | None = None

    @property
    def id(self) -> str:
        return f"{self.name}:{self.tag}"


@dataclass(frozen=True, slots=True)
class ScanProblem:
    path: str
    source: str
    reason: str
    skipped: bool = False  # True: a valid file that is not a model (vocab-only, projector with no model...)


@dataclass(slots=True)
class ScanResult:
    models: list[FoundModel] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)
