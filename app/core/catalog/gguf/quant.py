"""Names and sizes of GGML tensor types and llama.cpp file types, and quantization labels in file names.

The tables come from the `gguf` package, imported on first use because importing it is slow.
"""

from __future__ import annotations

import os
import re

__all__ = ["file_type_name", "ggml_type_size", "quantization_from_filename"]

_QUANT_RE = re.compile(
    r"(?<![a-z0-9])("
    r"iq[1-4]_(?:xxs|xs|nl|s|m)"
    r"|q[2-6]_k(?:_(?:xl|s|m|l))?"
    r"|q[4-8]_[01](?:_[48]_[48])?"
    r"|tq[12]_0|mxfp4(?:_moe)?|nvfp4|bf16|f16|f32"
    r")(?![a-z0-9])",
    re.IGNORECASE,
)

_file_type_names: dict[int, str] | None = None


def file_type_name(file_type: int) -> str | None:
    """Name of a llama.cpp file type ("Q4_K_M"), from gguf.LlamaFileType."""
    global _file_type_names
    if _file_type_names is None:
        names: dict[int, str] = {}
        try:
            import gguf

            for member in gguf.LlamaFileType:
                if member.name == "GUESSED":
                    continue
                names[int(member.value)] = "F32" if member.name == "ALL_F32" else member.name.removeprefix("MOSTLY_")
        except Exception:  # gguf missing or changed: fall back to the file name
            pass
        _file_type_names = names
    return _file_type_names.get(file_type)


def quantization_from_filename(filename: str) -> str | None:
    """The quantization label in a file name ("model.q4_k_m.gguf" -> "Q4_K_M"), the last one if several."""
    found = _QUANT_RE.findall(os.path.basename(filename))
    return found[-1].upper() if found else None


_type_sizes: dict[int, tuple[int, int]] | None = None


def ggml_type_size(ggml_type: int) -> tuple[int, int] | None:
    """(block size, bytes per block) of a ggml tensor type, from gguf.GGML_QUANT_SIZES."""
    global _type_sizes
    if _type_sizes is None:
        sizes: dict[int, tuple[int, int]] = {}
        try:
            import gguf

            sizes = {int(k): (int(v[0]), int(v[1])) for k, v in gguf.GGML_QUANT_SIZES.items()}
        except Exception:
            pass
        _type_sizes = sizes
    return _type_sizes.get(ggml_type)
