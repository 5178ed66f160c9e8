"""Fast, defensive reader of a GGUF file's header (metadata and tensor infos only).

    read_header(path) -> GGUFHeader, raises GGUFError(reason) for anything wrong with the file.

Why not `gguf.GGUFReader`: it memory-maps the whole file and builds numpy objects for every
token and merge of the vocabulary (seconds per model); a model scan only needs the scalars.
This reader never touches tensor data, skips fixed-size arrays by arithmetic, skips large
string arrays (the vocabulary) with a vectorised walk over the u64 length prefixes, and
checks every length against the bytes left in the file before it reads or allocates.

Files are read with positioned reads into a reused per-thread buffer rather than mmap: a file
truncated by another process while mapped would kill the whole app with SIGBUS.
"""

from __future__ import annotations

import math
import os
import re
import stat
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ArrayInfo", "GGUFError", "GGUFHeader", "read_header"]


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


# --- format constants -------------------------------------------------------------------------

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)

T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL = range(8)
T_STRING, T_ARRAY, T_UINT64, T_INT64, T_FLOAT64 = range(8, 13)

# struct format letter of every fixed-size value type
_FIXED_FMT: dict[int, str] = {
    T_UINT8: "B", T_INT8: "b", T_UINT16: "H", T_INT16: "h", T_UINT32: "I", T_INT32: "i",
    T_FLOAT32: "f", T_BOOL: "?", T_UINT64: "Q", T_INT64: "q", T_FLOAT64: "d",
}
_FIXED: dict[int, struct.Struct] = {t: struct.Struct("<" + f) for t, f in _FIXED_FMT.items()}
_FIXED_SIZE: dict[int, int] = {t: s.size for t, s in _FIXED.items()}
_TYPE_NAMES = {
    T_UINT8: "uint8", T_INT8: "int8", T_UINT16: "uint16", T_INT16: "int16", T_UINT32: "uint32",
    T_INT32: "int32", T_FLOAT32: "float32", T_BOOL: "bool", T_STRING: "string", T_ARRAY: "array",
    T_UINT64: "uint64", T_INT64: "int64", T_FLOAT64: "float64",
}

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U32U64 = struct.Struct("<IQ")  # array header: item type, count
_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor_count, kv_count
# tensor info after its name: n_dims is read first, then dims, ggml type and data offset at once
_TI_AFTER_NAME = [struct.Struct("<" + "Q" * n + "IQ").unpack_from for n in range(9)]
_TI_FAST = 8 + 64 + 4 + 8 * 8 + 12

# --- limits (every one is checked before anything is read or allocated) ------------------------

SMALL_ARRAY = 64  # arrays up to this many items keep their values
# Per-layer arrays (head counts of hybrid models) can be as long as block_count; keep them
# whole so that head_count / head_count_kv can take their max.
PER_LAYER_ARRAY = 4096
_PER_LAYER_SUFFIXES = (".attention.head_count", ".attention.head_count_kv")
MAX_KEY_BYTES = 65535  # the GGUF spec's limit for a key
MAX_STRING_BYTES = 1 << 20  # any one string value
MAX_LARGE_STRING_BYTES = 8 << 20  # chat templates, embedded tokenizer.json
_LARGE_STRING_KEYS = ("tokenizer.chat_template", "tokenizer.huggingface.json")
MAX_METADATA_BYTES = 64 << 20  # all keys and kept strings together
MAX_TENSOR_NAME_BYTES = 65535
MAX_DIMS = 8
MAX_ARRAY_DEPTH = 3  # an array of arrays of arrays; nothing real goes further
MAX_NESTED_ARRAYS = 1 << 20  # inner arrays walked one by one: bound the time spent on them
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset


# --- derived-property helpers -----------------------------------------------------------------

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


def _file_type_name(file_type: int) -> str | None:
    """Name of a llama.cpp file type ("Q4_K_M"), from gguf.LlamaFileType (imported lazily: it is slow)."""
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


def format_size_label(count: int) -> str:
    """A parameter count as llama.cpp's converters label it: 134_515_008 -> "135M", 1.54e9 -> "1.5B"."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale * 0.9995 or suffix == "K":
            value = count / scale
            text = f"{value:.0f}" if value >= 9.95 else f"{value:.1f}".removesuffix(".0")
            return text + suffix
    return str(count)  # not reached


_type_sizes: dict[int, tuple[int, int]] | None = None


def _ggml_type_size(ggml_type: int) -> tuple[int, int] | None:
    """(block size, bytes per block) of a ggml tensor type, from gguf's table (lazily imported)."""
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
            label = _file_type_name(file_type)
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


# --- reading ----------------------------------------------------------------------------------

WINDOW_BYTES = 1 << 20  # size of the reused read buffer (and of one vectorised string-walk window)
_READ_AHEAD = 64 << 10  # bytes read at a time while parsing scalars and tensor infos
_SCALAR_WALK_MAX = 32  # string arrays this short are walked with a plain loop
_BYTE_POS = np.uint64(0x0001020304050607)  # multiply trick: byte index of the one set byte of a word
_SHIFT56 = np.uint64(56)


class _Scratch:
    """Per-thread buffers reused across files: fresh multi-MB allocations page-fault on every call."""

    def __init__(self, cap: int = WINDOW_BYTES) -> None:
        self.cap = cap
        self.raw = bytearray(cap + 16)
        self.view = memoryview(self.raw)
        self.a = np.frombuffer(self.raw, dtype=np.uint8)
        pad = cap + 16
        self.z = np.zeros(pad, dtype=np.bool_)
        self.t1 = np.zeros(pad, dtype=np.bool_)
        self.t2 = np.zeros(pad, dtype=np.bool_)
        nw = pad // 8
        self.wn = np.zeros(nw, dtype=np.bool_)
        self.w = np.zeros(nw, dtype=np.uint64)
        self.c = np.zeros(nw, dtype=np.int64)
        self.n = np.zeros(nw, dtype=np.int64)
        self.ln = np.zeros(nw, dtype=np.uint8)
        self.ok = np.zeros(nw, dtype=np.bool_)


_local = threading.local()


def _scratch() -> _Scratch:
    s = getattr(_local, "scratch", None)
    if s is None:
        s = _local.scratch = _Scratch()
    return s


class _Reader:
    """Positioned reads of one open file through a window of the scratch buffer.

    `buf[pos - base]` is the byte at file offset `pos` for base <= pos < end.
    """

    __slots__ = ("fd", "size", "s", "buf", "base", "end")

    def __init__(self, fd: int, size: int, s: _Scratch) -> None:
        self.fd = fd
        self.size = size
        self.s = s
        self.buf: bytearray | bytes = s.raw
        self.base = 0
        self.end = 0

    def fill(self, pos: int, n: int, ahead: int = _READ_AHEAD) -> None:
        """Make [pos, pos + n) readable (the caller has checked it lies inside the file)."""
        want = min(max(n, ahead), self.size - pos)
        if want <= self.s.cap:
            got = _pread_into(self.fd, self.s.view[:want], pos)
            self.buf = self.s.raw
        else:  # a long chat template: a one-off buffer, bounded by the string caps
            data = _pread(self.fd, want, pos)
            got = len(data)
            self.buf = data
        if got < n:
            raise GGUFError(f"truncated: file shrank while reading (offset {pos + got} of {self.size})")
        self.base = pos
        self.end = pos + got


def _pread_into(fd: int, view: memoryview, pos: int) -> int:
    done = 0
    total = len(view)
    while done < total:
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [view[done:]], pos + done)
        else:  # pragma: no cover - Windows
            os.lseek(fd, pos + done, os.SEEK_SET)
            got = os.readv(fd, [view[done:]])
        if got <= 0:
            break
        done += got
    return done


def _pread(fd: int, n: int, pos: int) -> bytes:
    chunks = []
    done = 0
    while done < n:
        if hasattr(os, "pread"):
            chunk = os.pread(fd, n - done, pos + done)
        else:  # pragma: no cover - Windows
            os.lseek(fd, pos + done, os.SEEK_SET)
            chunk = os.read(fd, n - done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def _truncated(what: str, pos: int, need: int, size: int) -> GGUFError:
    return GGUFError(f"truncated: {what} at offset {pos} needs {need} bytes but {max(0, size - pos)} remain")


class _Parser:
    __slots__ = ("r", "size", "pos", "kept", "_last_ti")

    def __init__(self, r: _Reader) -> None:
        self.r = r
        self.size = r.size
        self.pos = 0
        self.kept = 0  # bytes of keys and strings decoded so far

    # -- primitives: each checks the file's remaining bytes first --

    def _at(self, n: int, what: str) -> int:
        """Offset in r.buf of the next n bytes."""
        pos = self.pos
        r = self.r
        if pos + n > r.end or pos < r.base:
            if pos + n > self.size:
                raise _truncated(what, pos, n, self.size)
            r.fill(pos, n)
        return pos - r.base

    def u32(self, what: str) -> int:
        off = self._at(4, what)
        self.pos += 4
        return _U32.unpack_from(self.r.buf, off)[0]

    def u64(self, what: str) -> int:
        off = self._at(8, what)
        self.pos += 8
        return _U64.unpack_from(self.r.buf, off)[0]

    def string(self, what: str, cap: int) -> str:
        start = self.pos
        length = self._string_length(what, cap)
        self.kept += length
        if self.kept > MAX_METADATA_BYTES:
            raise GGUFError(f"metadata larger than {MAX_METADATA_BYTES >> 20} MiB (at offset {start}); not a model header")
        off = self._at(length, what)
        self.pos += length
        return self.r.buf[off : off + length].decode("utf-8", "replace")

    def skip_string(self, what: str, cap: int) -> None:
        length = self._string_length(what, cap)  # moves pos past the prefix: read it before adding
        self.pos += length

    def _string_length(self, what: str, cap: int) -> int:
        """Read a string's length prefix and check it against the file and the cap."""
        start = self.pos
        length = self.u64(what)
        if length > self.size - self.pos:
            raise GGUFError(
                f"truncated: {what} at offset {start} claims {length} bytes but {self.size - self.pos} remain"
            )
        if length > cap:
            raise GGUFError(f"{what} at offset {start} is {length} bytes, over the {cap}-byte limit")
        return length

    # -- values --

    def value(self, vtype: int, key: str, depth: int = 0) -> Any:
        fixed = _FIXED.get(vtype)
        if fixed is not None:
            off = self._at(fixed.size, f"value of {key!r}")
            self.pos += fixed.size
            return fixed.unpack_from(self.r.buf, off)[0]
        if vtype == T_STRING:
            cap = MAX_LARGE_STRING_BYTES if key.startswith(_LARGE_STRING_KEYS) else MAX_STRING_BYTES
            return self.string(f"string value of {key!r}", cap)
        if vtype == T_ARRAY:
            return self.array(key, depth + 1, keep=True)
        raise GGUFError(f"unknown value type {vtype} for key {key!r} at offset {self.pos - 4}")

    def array(self, key: str, depth: int, keep: bool) -> Any:
        if depth > MAX_ARRAY_DEPTH:
            raise GGUFError(f"nested arrays too deep in {key!r} (more than {MAX_ARRAY_DEPTH} levels)")
        start = self.pos
        off = self._at(12, f"array header of {key!r}")
        item_type, count = _U32U64.unpack_from(self.r.buf, off)
        self.pos += 12
        remaining = self.size - self.pos
        limit = PER_LAYER_ARRAY if key.endswith(_PER_LAYER_SUFFIXES) else SMALL_ARRAY
        keep = keep and count <= limit

        item_size = _FIXED_SIZE.get(item_type)
        if item_size is not None:
            need = count * item_size
            if need > remaining:
                raise GGUFError(
                    f"truncated: array {key!r} at offset {start} claims {count} {_TYPE_NAMES[item_type]} items "
                    f"({need} bytes) but {remaining} remain"
                )
            if not keep:
                self.pos += need  # skipped by arithmetic, never read
                return ArrayInfo(item_type, count)
            off = self._at(need, f"array {key!r}")
            self.pos += need
            return list(struct.unpack_from(f"<{count}{_FIXED_FMT[item_type]}", self.r.buf, off))

        if item_type == T_STRING:
            if count * 8 > remaining:
                raise GGUFError(
                    f"truncated: string array {key!r} at offset {start} claims {count} items "
                    f"(at least {count * 8} bytes) but {remaining} remain"
                )
            what = f"string in array {key!r}"
            if keep:
                return [self.string(what, MAX_STRING_BYTES) for _ in range(count)]
            self.pos = _skip_strings(self, self.pos, count, what)
            return ArrayInfo(item_type, count)

        if item_type == T_ARRAY:
            if count * 12 > remaining:
                raise GGUFError(
                    f"truncated: array {key!r} at offset {start} claims {count} nested arrays "
                    f"(at least {count * 12} bytes) but {remaining} remain"
                )
            if count > MAX_NESTED_ARRAYS:
                raise GGUFError(f"array {key!r} holds {count} nested arrays, over the {MAX_NESTED_ARRAYS} limit")
            if depth + 1 > MAX_ARRAY_DEPTH:
                raise GGUFError(f"nested arrays too deep in {key!r} (more than {MAX_ARRAY_DEPTH} levels)")
            items = [self.array(key, depth + 1, keep) for _ in range(count)]
            return items if keep else ArrayInfo(item_type, count)

        raise GGUFError(f"unknown array item type {item_type} for key {key!r} at offset {start}")

    # -- tensor infos --

    def tensor_infos(self, count: int) -> tuple[int, int, int, int]:
        """Walk the tensor infos: (sum of element counts, largest data offset, its type, its elements)."""
        r = self.r
        size = self.size
        pos = self.pos
        total = 0
        max_off = -1
        max_type = 0
        max_elems = 0
        u64 = _U64.unpack_from
        u32 = _U32.unpack_from
        after_name = _TI_AFTER_NAME
        prod = math.prod
        for i in range(count):
            # Fast path: the window holds the next _TI_FAST bytes, enough for a name of up to
            # 64 bytes and 8 dims, so no per-field bounds checks are needed.
            if pos + _TI_FAST > r.end or pos < r.base:
                if pos + _TI_FAST > size:
                    pos = self._tensor_info_careful(i, pos)
                    total, max_off, max_type, max_elems = self._fold(total, max_off, max_type, max_elems)
                    continue
                r.fill(pos, _TI_FAST)
            buf = r.buf
            off = pos - r.base
            name_len = u64(buf, off)[0]
            if name_len > 64:
                pos = self._tensor_info_careful(i, pos)
                total, max_off, max_type, max_elems = self._fold(total, max_off, max_type, max_elems)
                continue
            off += 8 + name_len
            n_dims = u32(buf, off)[0]
            if n_dims > MAX_DIMS:
                raise GGUFError(f"tensor info #{i} at offset {pos} has {n_dims} dimensions (at most {MAX_DIMS})")
            fields = after_name[n_dims](buf, off + 4)  # dims..., ggml type, data offset
            elems = prod(fields[:n_dims])
            total += elems
            if fields[-1] > max_off:
                max_off, max_type, max_elems = fields[-1], fields[-2], elems
            pos += 8 + name_len + 4 + 8 * n_dims + 12
        self.pos = pos
        return total, max_off, max_type, max_elems

    def _fold(self, total: int, max_off: int, max_type: int, max_elems: int) -> tuple[int, int, int, int]:
        elems, data_off, ggml_type = self._last_ti
        if data_off > max_off:
            max_off, max_type, max_elems = data_off, ggml_type, elems
        return total + elems, max_off, max_type, max_elems

    def _tensor_info_careful(self, i: int, pos: int) -> int:
        """One tensor info with every length checked against the file; returns the next offset."""
        what = f"tensor info #{i}"
        self.pos = pos
        name_len = self.u64(what)
        if name_len > MAX_TENSOR_NAME_BYTES:
            raise GGUFError(f"{what} at offset {pos} has a {name_len}-byte name (corrupt header)")
        if name_len + 4 > self.size - self.pos:
            raise _truncated(what, pos, 8 + name_len + 4, self.size)
        self.pos += name_len
        n_dims = self.u32(what)
        if n_dims > MAX_DIMS:
            raise GGUFError(f"{what} at offset {pos} has {n_dims} dimensions (at most {MAX_DIMS})")
        need = 8 * n_dims + 12
        off = self._at(need, what)
        fields = _TI_AFTER_NAME[n_dims](self.r.buf, off)
        self.pos += need
        self._last_ti = (math.prod(fields[:n_dims]), fields[-1], fields[-2])
        return self.pos


def _skip_strings(pr: _Parser, pos: int, count: int, what: str) -> int:
    """Offset just past `count` length-prefixed strings starting at `pos` (contents never decoded).

    Vectorised: in a window of the file, a string record [u64 length < 256][text] shows up as
    seven zero bytes followed by a non-zero byte. Those candidate starts are found with numpy,
    each candidate's successor (start + 8 + length) is computed at once, and the records are
    accepted only while successors land exactly on the next candidate, starting from `pos`.
    Anything else (long strings, empty strings, text with NUL bytes) is stepped over one
    record at a time with full checks, then the fast chain resumes.
    """
    r = pr.r
    s = r.s
    size = pr.size
    done = 0
    while done < count:
        left = count - done
        if left <= _SCALAR_WALK_MAX:
            pr.pos = pos
            for _ in range(left):
                pr.skip_string(what, MAX_STRING_BYTES)
            return pr.pos
        # one window: enough for the remaining strings at ~16 bytes each, bounded by the buffer
        want = min(size - pos, s.cap, max(left * 16, _READ_AHEAD))
        if want < 8:
            raise _truncated(what, pos, 8, size)
        r.fill(pos, want, ahead=want)
        buf = r.buf
        base = r.base
        width = r.end - base
        rel = pos - base
        walked, rel = _walk_window(s, buf, width, rel, left, what, size, base)
        done += walked
        pos = base + rel
        if pos > size:
            raise GGUFError(f"truncated: {what} ends at offset {pos} but the file has {size} bytes")
    return pos


def _walk_window(
    s: _Scratch, buf: Any, width: int, rel: int, left: int, what: str, size: int, base: int
) -> tuple[int, int]:
    """Walk up to `left` records from buf[rel] inside buf[:width]: (records walked, new rel)."""
    u64 = _U64.unpack_from
    done = 0
    chain = None  # (c, n, ok, breaks) lists, computed lazily on the first fast-path use
    while done < left:
        if rel + 8 > width:
            return done, rel  # the next length prefix is past the window: caller refills
        if chain is None:
            chain = _candidates(s, width) if buf is s.raw else ((), (), None)
        c, nxt, breaks = chain
        i = _find(c, rel) if len(c) else -1
        if i < 0:
            # not a fast-path record: one careful step
            length = u64(buf, rel)[0]
            if base + rel + 8 + length > size:
                raise GGUFError(
                    f"truncated: {what} at offset {base + rel} claims {length} bytes "
                    f"but {size - base - rel - 8} remain"
                )
            if length > MAX_STRING_BYTES:
                raise GGUFError(f"{what} at offset {base + rel} is {length} bytes, over the {MAX_STRING_BYTES}-byte limit")
            rel += 8 + length
            done += 1
            continue
        # records c[i], c[i+1], ... chain correctly up to the next break
        b = _next_break(breaks, i, len(c))
        want = left - done
        if b - i + 1 >= want:
            last = i + want - 1
            return left, int(nxt[last])
        done += b - i + 1
        rel = int(nxt[b])
    return done, rel


def _find(c: Any, rel: int) -> int:
    i = int(np.searchsorted(c, rel))
    return i if i < len(c) and int(c[i]) == rel else -1


def _next_break(breaks: Any, i: int, n: int) -> int:
    """Index of the first candidate at or after i whose successor is not the next candidate."""
    if breaks is None:
        return n - 1
    j = int(np.searchsorted(breaks, i))
    return int(breaks[j]) if j < len(breaks) else n - 1


def _candidates(s: _Scratch, width: int) -> tuple[Any, Any, Any]:
    """Candidate record starts in s.raw[:width] and their successors (both sorted int64 arrays)."""
    if width < 16:
        return (), (), None
    a = s.a
    z, t1, t2 = s.z, s.t1, s.t2
    # z[i]: byte i is zero; t2[i]: bytes i..i+6 are all zero (built by doubling)
    np.equal(a[:width], 0, out=z[:width])
    np.logical_and(z[: width - 1], z[1:width], out=t1[: width - 1])
    np.logical_and(t1[: width - 3], t1[2 : width - 1], out=t2[: width - 3])
    np.logical_and(t2[: width - 6], t2[3 : width - 3], out=t1[: width - 6])
    # record start i: bytes i+1..i+7 zero (length < 256) and byte i+8 not zero (first text byte)
    m = width - 8  # candidates i in [0, m)
    np.greater(t1[1 : m + 1], z[8 : m + 8], out=t2[:m])
    padded = (m + 7) & ~7
    t2[m:padded] = False
    # compact: at most one candidate per aligned 8-byte word for valid records (each >= 9 bytes)
    nw = padded // 8
    words = t2[:padded].view(np.uint64)
    wn = s.wn[:nw]
    np.not_equal(words, 0, out=wn)
    k = int(np.count_nonzero(wn))
    if k < 2:
        return (), (), None
    idx = np.flatnonzero(wn)  # (np.compress with out= is ten times slower here)
    # Candidates are >= 8 bytes apart (byte i+8 is non-zero, bytes j+1..j+7 of a later one are
    # zero), so every such word holds exactly one set byte: w == 1 << 8*b. Its index b comes
    # from one multiplication: the top byte of (w * 0x0001020304050607) is b.
    w = s.w[:k]
    np.take(words, idx, out=w, mode="clip")
    np.multiply(w, _BYTE_POS, out=w)
    np.right_shift(w, _SHIFT56, out=w)
    c = s.c[:k]
    np.multiply(idx, 8, out=c)
    np.add(c, w.view(np.int64), out=c)
    k = len(c)
    ln = s.ln[:k]
    np.take(a, c, out=ln, mode="clip")  # the length's low byte; the other seven are zero by construction
    nxt = s.n[:k]
    np.add(c, 8, out=nxt)
    np.add(nxt, ln, out=nxt)
    ok = s.ok[: k - 1]
    np.equal(nxt[: k - 1], c[1:], out=ok)
    breaks = None if ok.all() else np.flatnonzero(~ok)
    return c, nxt, breaks


def _open(path: str) -> int:
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    # O_NONBLOCK: opening a FIFO named *.gguf must not hang the scan
    flags |= getattr(os, "O_NONBLOCK", 0)
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            raise GGUFError(f"broken symbolic link: target {target!r} does not exist") from None
        raise GGUFError("no such file") from None
    except IsADirectoryError:
        raise GGUFError("is a directory, not a GGUF file") from None
    except PermissionError:
        if os.path.isdir(path):
            raise GGUFError("is a directory, not a GGUF file") from None
        raise GGUFError("permission denied: the file is not readable") from None
    except OSError as e:
        if os.path.islink(path):
            raise GGUFError(f"cannot follow symbolic link: {e.strerror or e}") from None
        raise GGUFError(f"cannot open: {e.strerror or e}") from None


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Read the metadata and tensor infos of a GGUF file; GGUFError(reason) if it is not a usable one."""
    try:
        p = os.fspath(path)
    except TypeError:
        raise GGUFError(f"not a file path: {path!r}") from None
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    fd = _open(p)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise GGUFError("is a directory, not a GGUF file")
        if not stat.S_ISREG(st.st_mode):
            raise GGUFError("not a regular file")
        if st.st_size == 0:
            raise GGUFError("empty file (0 bytes)")
        return _parse(_Reader(fd, st.st_size, _scratch()), p)
    except GGUFError:
        raise
    except OSError as e:
        raise GGUFError(f"read error: {e.strerror or e}") from None
    except MemoryError:
        raise GGUFError("out of memory while reading the header") from None
    except Exception as e:  # last line of defence: a scan must survive any file
        raise GGUFError(f"unreadable header ({type(e).__name__}: {e})") from e
    finally:
        os.close(fd)


def _parse(r: _Reader, path: str) -> GGUFHeader:
    size = r.size
    if size < 4:
        raise GGUFError(f"not a GGUF file (only {size} bytes)")
    r.fill(0, min(size, 24))
    magic = bytes(r.buf[0:4])
    if magic != GGUF_MAGIC:
        if magic == b"FUGG":
            raise GGUFError("big-endian GGUF files are not supported")
        raise GGUFError(f"not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    if size < 8:
        raise _truncated("version", 4, 4, size)
    version = _U32.unpack_from(r.buf, 4)[0]
    if version not in SUPPORTED_VERSIONS:
        if version == 1:
            raise GGUFError("GGUF version 1 is not supported (obsolete format; convert the model again)")
        if version and version & 0xFFFF == 0:
            raise GGUFError("big-endian GGUF files are not supported")
        raise GGUFError(f"unsupported GGUF version {version} (supported: 2 and 3)")
    if size < 24:
        raise _truncated("header counts", 8, 16, size)
    _, _, tensor_count, kv_count = _HEADER.unpack_from(r.buf, 0)
    remaining = size - 24
    if kv_count * _MIN_KV_BYTES > remaining:
        raise GGUFError(
            f"truncated or corrupt header: kv_count {kv_count} needs at least {kv_count * _MIN_KV_BYTES} bytes but {remaining} remain"
        )
    if tensor_count * _MIN_TENSOR_INFO_BYTES > remaining:
        raise GGUFError(
            f"truncated or corrupt header: tensor_count {tensor_count} needs at least "
            f"{tensor_count * _MIN_TENSOR_INFO_BYTES} bytes but {remaining} remain"
        )

    pr = _Parser(r)
    pr.pos = 24
    metadata: dict[str, Any] = {}
    for i in range(kv_count):
        key = pr.string(f"key #{i}", MAX_KEY_BYTES)
        vtype = pr.u32(f"value type of {key!r}")
        if vtype not in _TYPE_NAMES:
            raise GGUFError(f"unknown value type {vtype} for key {key!r} at offset {pr.pos - 4}")
        if key in metadata:
            raise GGUFError(f"duplicate key {key!r} (corrupt header)")
        metadata[key] = pr.value(vtype, key)

    parameters, max_off, max_type, max_elems = pr.tensor_infos(tensor_count)

    # Tensor data must fit in the file: catches cut-off downloads whose header is intact.
    if max_off >= 0:
        align = metadata.get("general.alignment", 32)
        if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
            raise GGUFError(f"invalid general.alignment {align!r} (must be a power of two)")
        data_start = -(-pr.pos // align) * align
        sizes = _ggml_type_size(max_type)
        if sizes is not None:
            block, type_size = sizes
            data_end = data_start + max_off + -(-max_elems // block) * type_size
            if data_end > size:
                raise GGUFError(
                    f"truncated: tensor data needs {data_end} bytes but the file has {size} (incomplete download?)"
                )

    return GGUFHeader(
        path=path,
        version=version,
        file_size=size,
        tensor_count=tensor_count,
        metadata=metadata,
        tensor_parameters=parameters,
    )
