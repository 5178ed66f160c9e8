"""Fast, defensive reader of a GGUF file's header (metadata and tensor infos only).

INTERFACE CONTRACT (implementation in progress):
    read_header(path) -> GGUFHeader, raises GGUFError(reason) for anything wrong with the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


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

    # Derived views -- see implementation for the keys they read.
    @property
    def architecture(self) -> str | None: ...
    @property
    def name(self) -> str | None: ...  # general.name
    @property
    def file_type(self) -> int | None: ...  # general.file_type
    @property
    def quantization(self) -> str | None: ...  # "Q4_K_M" etc. from file_type, else parsed from the file name
    @property
    def size_label(self) -> str | None: ...  # general.size_label, else derived from parameter_count ("135M")
    @property
    def parameter_count(self) -> int | None: ...  # general.parameter_count, else tensor_parameters or None
    @property
    def context_length(self) -> int | None: ...  # <arch>.context_length
    @property
    def embedding_length(self) -> int | None: ...
    @property
    def block_count(self) -> int | None: ...
    @property
    def head_count(self) -> int | None: ...
    @property
    def head_count_kv(self) -> int | None: ...
    @property
    def chat_template(self) -> str | None: ...  # tokenizer.chat_template
    @property
    def has_chat_template(self) -> bool: ...
    @property
    def pooling_type(self) -> int | None: ...  # <arch>.pooling_type
    @property
    def split_count(self) -> int: ...  # split.count, else 1
    @property
    def split_no(self) -> int: ...  # split.no, else 0
    @property
    def is_vocab_only(self) -> bool: ...  # tensor_count == 0 and not a split part > 0
    @property
    def is_projector(self) -> bool: ...  # architecture "clip" / general.type "mmproj"


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    raise NotImplementedError
