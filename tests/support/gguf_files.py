"""Small but real GGUF files for tests and benchmarks, written with gguf.GGUFWriter.

    from tests.support.gguf_files import write_gguf
    path = write_gguf(tmp_path / "model.Q4_K_M.gguf", name="Tiny", file_type=15, chat_template="{{ x }}")

Headers look like real ones (architecture, context length, vocabulary arrays, chat template...);
tensors are tiny 1-D float32 arrays, so a file weighs a few KB (plus ~15 bytes per vocab token).
These files are for header readers and model discovery; llama.cpp cannot run them.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["make_tokens", "write_gguf"]

# llama.cpp's file types by label (gguf.LlamaFileType values), handy for `file_type=`
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_K_M": 17, "Q4_K_M": 15, "Q6_K": 18, "BF16": 32}

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no what up out who them some could more"
).split()


def make_tokens(n: int, seed: int = 0) -> list[str]:
    """n plausible vocabulary entries: special tokens, byte tokens, then BPE-like pieces (mostly 2-10 bytes)."""
    rng = random.Random(seed)
    special = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    out = special[:n]
    out += [f"<0x{b:02X}>" for b in range(min(256, max(0, n - len(out))))]
    letters = "abcdefghijklmnopqrstuvwxyzetaoinshr"
    while len(out) < n:
        r = rng.random()
        if r < 0.3:
            tok = "Ġ" + rng.choice(_WORDS)
        elif r < 0.45:
            tok = "▁" + "".join(rng.choice(letters) for _ in range(rng.randint(1, 6)))
        elif r < 0.5:
            tok = rng.choice(["ä", "é", "ñ", "中", "文", "ß", "ø"]) * rng.randint(1, 2)
        else:
            tok = "".join(rng.choice(letters) for _ in range(rng.choice((1, 2, 3, 3, 4, 4, 5, 5, 6, 7, 8, 9, 12))))
        out.append(tok)
    return out


def _typed(value: Any) -> tuple[Any, Any, Any]:
    """(value, GGUFValueType, array sub-type) for a plain Python value or an explicit (value, type[, sub]) tuple."""
    from gguf import GGUFValueType as T

    if isinstance(value, tuple) and len(value) in (2, 3) and isinstance(value[1], T):
        return value[0], value[1], (value[2] if len(value) == 3 else None)
    if isinstance(value, bool):
        return value, T.BOOL, None
    if isinstance(value, int):
        if 0 <= value < 2**32:
            return value, T.UINT32, None
        if -(2**31) <= value < 0:
            return value, T.INT32, None
        return value, (T.UINT64 if value > 0 else T.INT64), None
    if isinstance(value, float):
        return value, T.FLOAT32, None
    if isinstance(value, str):
        return value, T.STRING, None
    if isinstance(value, (list, tuple)):
        items = list(value)
        sub = None
        if items and all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            sub = T.INT32 if all(-(2**31) <= v < 2**31 for v in items) else T.INT64
        return items, T.ARRAY, sub
    raise TypeError(f"cannot store {type(value).__name__} in GGUF metadata")


def write_gguf(
    path: str | os.PathLike[str],
    *,
    arch: str = "llama",
    name: str | None = "Test Model",
    file_type: int | None = None,
    context_length: int | None = 2048,
    embedding_length: int | None = 64,
    block_count: int | None = 2,
    head_count: int | Sequence[int] | None = 4,
    head_count_kv: int | Sequence[int] | None = None,
    vocab_size: int = 0,
    chat_template: str | None = None,
    pooling_type: int | None = None,
    size_label: str | None = None,
    general_type: str | None = None,
    n_tensors: int = 2,
    tensor_shape: Sequence[int] = (4,),
    realistic: bool = False,
    extra_kv: Mapping[str, Any] | None = None,
    split: tuple[int, int] | None = None,
    tensor_count_override: int | None = None,
    version: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a small GGUF file at `path` (parent folders created) and return it as a Path.

    Metadata keys are the standard ones: general.architecture = arch, general.name, general.file_type
    (a gguf.LlamaFileType value, see FILE_TYPES), "<arch>.context_length", "<arch>.embedding_length",
    "<arch>.block_count", "<arch>.attention.head_count[_kv]" (an int, or a per-layer list), "<arch>.pooling_type",
    tokenizer.chat_template, general.size_label, general.type; None leaves a key out.
    vocab_size > 0 adds tokenizer.ggml.tokens / scores / token_type arrays of that length.
    realistic adds the other keys llama.cpp's converter writes (license, rope, tokenizer ids...).
    extra_kv: more keys; plain values are typed str->string, bool->bool, int->uint32 (int32 if negative,
    64-bit if large), float->float32, list->array; or pass (value, gguf.GGUFValueType[, sub_type]).
    n_tensors float32 tensors of tensor_shape each (so tensor_parameters = n_tensors * prod(shape)).
    split=(no, count) writes split.no / split.count / split.tensors.count (name the file yourself,
    e.g. "m-00001-of-00002.gguf"). tensor_count_override / version patch those header fields
    afterwards, to make lying or old-format files.
    """
    import gguf
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(path, arch)
    if name is not None:
        w.add_name(name)
    if general_type is not None:
        w.add_type(general_type)
    if size_label is not None:
        w.add_size_label(size_label)
    if realistic:
        w.add_string("general.organization", "Switchboard Tests")
        w.add_string("general.basename", (name or "test").lower().replace(" ", "-"))
        w.add_string("general.finetune", "instruct")
        w.add_string("general.license", "apache-2.0")
        w.add_array("general.languages", ["en"])
        w.add_uint32(f"{arch}.feed_forward_length", 4 * (embedding_length or 64))
        w.add_float32(f"{arch}.rope.freq_base", 100000.0)
        w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
        w.add_uint32(f"{arch}.rope.dimension_count", 64)
        if vocab_size:
            w.add_uint32(f"{arch}.vocab_size", vocab_size)
    if context_length is not None:
        w.add_context_length(context_length)
    if embedding_length is not None:
        w.add_embedding_length(embedding_length)
    if block_count is not None:
        w.add_block_count(block_count)
    if head_count is not None:
        w.add_head_count(head_count)
    if head_count_kv is not None:
        w.add_head_count_kv(head_count_kv)
    if pooling_type is not None:
        w.add_uint32(f"{arch}.pooling_type", pooling_type)
    if file_type is not None:
        w.add_file_type(file_type)
    if vocab_size:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(make_tokens(vocab_size, seed))
        w.add_token_scores([float(-i) for i in range(vocab_size)])
        w.add_token_types([3 if i < 6 else (6 if i < 262 else 1) for i in range(vocab_size)])
        if realistic:
            w.add_bos_token_id(1)
            w.add_eos_token_id(2)
            w.add_unk_token_id(0)
            w.add_pad_token_id(2)
            w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    if realistic:
        w.add_quantization_version(2)
    if split is not None:
        no, count = split
        w.add_key_value("split.no", no, gguf.GGUFValueType.UINT16)
        w.add_key_value("split.count", count, gguf.GGUFValueType.UINT16)
        w.add_key_value("split.tensors.count", n_tensors * count, gguf.GGUFValueType.INT32)
    for key, value in (extra_kv or {}).items():
        val, vtype, sub = _typed(value)
        w.add_key_value(key, val, vtype, sub_type=sub)

    shape = tuple(int(d) for d in tensor_shape)
    for i in range(n_tensors):
        if i == 0:
            tname = "token_embd.weight"
        elif i == n_tensors - 1:
            tname = "output_norm.weight"
        else:
            tname = f"blk.{(i - 1) // 9}.{('attn_q', 'attn_k', 'attn_v', 'attn_output', 'attn_norm', 'ffn_gate', 'ffn_up', 'ffn_down', 'ffn_norm')[(i - 1) % 9]}.weight"
        w.add_tensor(tname, np.full(shape, 0.5 + i, dtype=np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    if tensor_count_override is not None or version is not None:
        with open(path, "r+b") as f:
            if version is not None:
                f.seek(4)
                f.write(struct.pack("<I", version))
            if tensor_count_override is not None:
                f.seek(8)
                f.write(struct.pack("<Q", tensor_count_override))
    return path
