"""What a GGUF file's header says: the GGUFHeader record and the values derived from its metadata.

`reader.read_header(path)` builds one; everything here is pure (no file access).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from app.core.catalog.gguf.quant import file_type_name, quantization_from_filename

__all__ = ["ArrayInfo", "GGUFError", "GGUFHeader", "format_size_label"]


class GGUFError(Exception):
    """The file is not a readable GGUF model header; `reason` says why in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    """A metadata array too large to keep (e.g. the tokenizer vocabulary): only its type and length."""

    item_type: int
    count: int


def format_size_label(count: int) -> str:
    """A parameter count as llama.cpp's converters label it: 134_515_008 -> "135M", 1.54e9 -> "1.5B"."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale * 0.9995 or suffix == "K":
            value = count / scale
            text = f"{value:.0f}" if value >= 9.95 else f"{value:.1f}".removesuffix(".0")
            return text + suffix
    return str(count)  # not reached


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return max(value)  # per-layer arrays: the largest layer decides
    return None


@dataclass(frozen=True, slots=True)
class GGUFHeader:
    path: str
    version: int
    file_size: int
    tensor_count: int
    # Scalars and strings as Python values; small arrays (<= 64 items) as lists; larger ones as ArrayInfo.
    metadata: dict[str, Any] = field(default_factory=dict)
    # Sum over tensor infos of the product of their dims (0 when the file has no tensors).
    tensor_parameters: int = 0

    def _str(self, key: str) -> str | None:
        value = self.metadata.get(key)
        return value if isinstance(value, str) else None

    def _arch_int(self, suffix: str) -> int | None:
        arch = self.architecture
        return _int_or_none(self.metadata.get(f"{arch}.{suffix}")) if arch else None

    @property
    def architecture(self) -> str | None:
        return self._str("general.architecture")

    @property
    def name(self) -> str | None:
        return self._str("general.name")

    @property
    def file_type(self) -> int | None:
        value = self.metadata.get("general.file_type")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def quantization(self) -> str | None:
        """"Q4_K_M" etc. from general.file_type, else parsed from the file name, else None."""
        file_type = self.file_type
        if file_type is not None:
            label = file_type_name(file_type)
            if label:
                return label
        return quantization_from_filename(self.path)

    @property
    def parameter_count(self) -> int | None:
        value = self.metadata.get("general.parameter_count")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        return self.tensor_parameters or None

    @property
    def size_label(self) -> str | None:
        label = self._str("general.size_label")
        if label:
            return label
        count = self.parameter_count
        return format_size_label(count) if count else None

    @property
    def context_length(self) -> int | None:
        return self._arch_int("context_length")

    @property
    def embedding_length(self) -> int | None:
        return self._arch_int("embedding_length")

    @property
    def block_count(self) -> int | None:
        return self._arch_int("block_count")

    @property
    def head_count(self) -> int | None:
        return self._arch_int("attention.head_count")

    @property
    def head_count_kv(self) -> int | None:
        return self._arch_int("attention.head_count_kv")

    @property
    def chat_template(self) -> str | None:
        return self._str("tokenizer.chat_template")

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    @property
    def pooling_type(self) -> int | None:
        return self._arch_int("pooling_type")

    @property
    def split_count(self) -> int:
        value = _int_or_none(self.metadata.get("split.count"))
        return value if value and value > 0 else 1

    @property
    def split_no(self) -> int:
        value = _int_or_none(self.metadata.get("split.no"))
        return value if value and value > 0 else 0

    @property
    def is_vocab_only(self) -> bool:
        """No tensors and not part of a split model (whose first part may hold only metadata)."""
        if self._str("general.type") == "vocab":
            return True
        return self.tensor_count == 0 and self.split_count <= 1

    @property
    def is_projector(self) -> bool:
        """A multimodal projector (mmproj) file: loaded beside a model, never on its own."""
        return (
            self.architecture == "clip"
            or self._str("general.type") == "mmproj"
            or os.path.basename(self.path).lower().startswith("mmproj")
        )
