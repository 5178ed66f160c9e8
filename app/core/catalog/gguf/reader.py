"""Fast, defensive reader of a GGUF file's header (metadata and tensor infos only).

    read_header(path) -> GGUFHeader, raises GGUFError(reason) for anything wrong with the file.

Why not `gguf.GGUFReader`: it memory-maps the whole file and builds numpy objects for every
token and merge of the vocabulary (seconds per model); a model scan only needs the scalars.
This reader never touches tensor data, skips fixed-size arrays by arithmetic, skips large
string arrays (the vocabulary) with a vectorised walk over the u64 length prefixes, and
checks every length against the bytes left in the file before it reads or allocates.

Here: the format's constants, its limits, and the parser. The record it returns is in header.py,
opening and reading the file in window.py, the string-array walk in strings.py.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from typing import Any

from app.core.catalog.gguf.header import ArrayInfo, GGUFError, GGUFHeader
from app.core.catalog.gguf.quant import ggml_type_size
from app.core.catalog.gguf.strings import skip_strings
from app.core.catalog.gguf.window import Window, open_file, scratch, truncated

__all__ = ["read_header"]


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


class _Parser:
    __slots__ = ("r", "size", "pos", "kept", "_last_ti")

    def __init__(self, r: Window) -> None:
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
                raise truncated(what, pos, n, self.size)
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
            raise GGUFError(
                f"metadata larger than {MAX_METADATA_BYTES >> 20} MiB (at offset {start}); not a model header"
            )
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
            self.pos = skip_strings(self, self.pos, count, what, MAX_STRING_BYTES)
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
            raise truncated(what, pos, 8 + name_len + 4, self.size)
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


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Read the metadata and tensor infos of a GGUF file; GGUFError(reason) if it is not a usable one."""
    try:
        p = os.fspath(path)
    except TypeError:
        raise GGUFError(f"not a file path: {path!r}") from None
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    fd = open_file(p)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise GGUFError("is a directory, not a GGUF file")
        if not stat.S_ISREG(st.st_mode):
            raise GGUFError("not a regular file")
        if st.st_size == 0:
            raise GGUFError("empty file (0 bytes)")
        return parse(Window(fd, st.st_size, scratch()), p)
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


def parse(r: Window, path: str) -> GGUFHeader:
    """The header in a window over a file's bytes (its size the file's); `path` names it in errors. read_header
    opens a file for it; the hub gives it the first bytes of a remote file."""
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
        raise truncated("version", 4, 4, size)
    version = _U32.unpack_from(r.buf, 4)[0]
    if version not in SUPPORTED_VERSIONS:
        if version == 1:
            raise GGUFError("GGUF version 1 is not supported (obsolete format; convert the model again)")
        if version and version & 0xFFFF == 0:
            raise GGUFError("big-endian GGUF files are not supported")
        raise GGUFError(f"unsupported GGUF version {version} (supported: 2 and 3)")
    if size < 24:
        raise truncated("header counts", 8, 16, size)
    _, _, tensor_count, kv_count = _HEADER.unpack_from(r.buf, 0)
    remaining = size - 24
    if kv_count * _MIN_KV_BYTES > remaining:
        raise GGUFError(
            f"truncated or corrupt header: kv_count {kv_count} needs at least {kv_count * _MIN_KV_BYTES} bytes "
            f"but {remaining} remain"
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
        sizes = ggml_type_size(max_type)
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
