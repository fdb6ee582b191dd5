"""Check a GGUF file's header against its size before any GGUF reader sees it.

A GGUF header is a list of counts and lengths that readers trust: a 60-byte file whose
metadata array claims 2^63 items makes ``gguf.GGUFReader`` (and transformers, which uses it)
loop or allocate without end. :func:`check_gguf` walks the header itself, with buffered reads
and seeks (no memory map, nothing allocated from a count in the file), and refuses, in one
line naming the file, anything that cannot fit: a tensor or key count, a string or array
length larger than the bytes left, nesting deeper than :data:`MAX_NESTING`, an unknown value or
tensor type, a bad ``general.alignment``, a duplicate name, or a tensor whose data runs past
the end of the file. Work is linear in the header's size. Versions 2 and 3 (what the ``gguf``
package reads), either byte order. Imports nothing heavy (``gguf``'s type table if installed).
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from lorakit.errors import UsageError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
#: Arrays inside arrays, at most this deep.
MAX_NESTING = 4
#: The longest key or tensor name (bytes); strings in values are bounded by the file only.
MAX_NAME = 65_535
#: Dimensions of a tensor, at most.
MAX_DIMS = 8

#: Value type → (struct code, size); 8 is a string, 9 an array.
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
#: The fewest bytes one item of a type takes (an array: its type and count).
_MIN_SIZE = {**{t: struct.calcsize(c) for t, c in _SCALARS.items()}, _STRING: 8, _ARRAY: 12}


class _Bad(Exception):
    """What is wrong, in words; :func:`check_gguf` adds the file."""


@dataclass(frozen=True)
class GgufTensor:
    """One tensor's entry: its GGML type number, dimensions (innermost first), byte range."""

    type: int
    dims: tuple[int, ...]
    start: int
    size: int


@dataclass
class GgufHeader:
    """A checked header: the version, metadata keys and tensors by name."""

    path: Path
    version: int
    keys: list[str] = field(default_factory=list)
    tensors: dict[str, GgufTensor] = field(default_factory=dict)


class _Reader:
    def __init__(self, handle: BinaryIO, size: int, order: str) -> None:
        self.handle, self.size, self.order = handle, size, order

    @property
    def left(self) -> int:
        return self.size - self.handle.tell()

    def unpack(self, code: str) -> int:
        width = struct.calcsize(code)
        data = self.handle.read(width)
        if len(data) != width:
            raise _Bad("truncated: the header runs past the end of the file")
        return int(struct.unpack(self.order + code, data)[0])

    def count(self, what: str, item_size: int) -> int:
        n = self.unpack("Q")
        if n * item_size > self.left:
            raise _Bad(f"{what} claims {n} items, more than the {self.size}-byte file holds")
        return n

    def name(self, what: str) -> str:
        n = self.count(f"{what}'s length", 1)
        if n > MAX_NAME:
            raise _Bad(f"{what} is {n} bytes long (at most {MAX_NAME})")
        data = self.handle.read(n)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad(f"{what} is not UTF-8 text") from None

    def skip(self, n: int) -> None:
        self.handle.seek(n, io.SEEK_CUR)

    def value(self, kind: int, where: str, depth: int = 0) -> int | None:
        """Skip one value of ``kind``; return it when it is an integer scalar."""
        if kind in _SCALARS:
            code = _SCALARS[kind]
            if self.left < struct.calcsize(code):
                raise _Bad("truncated: the header runs past the end of the file")
            if code in "fd?":
                self.skip(struct.calcsize(code))
                return None
            return self.unpack(code)
        if kind == _STRING:
            self.skip(self.count(f"{where}: a string", 1))
            return None
        if kind != _ARRAY:
            raise _Bad(f"{where}: unknown value type {kind}")
        if depth >= MAX_NESTING:
            raise _Bad(f"{where}: arrays nested more than {MAX_NESTING} deep")
        item = self.unpack("I")
        if item not in _MIN_SIZE:
            raise _Bad(f"{where}: array of unknown value type {item}")
        n = self.count(f"{where}: an array", _MIN_SIZE[item])
        if item in _SCALARS:
            self.skip(n * _MIN_SIZE[item])
        else:
            for _ in range(n):
                self.value(item, where, depth + 1)
        return None


def _type_sizes() -> dict[int, tuple[int, int]] | None:
    """GGML type → (block size, bytes per block), from the gguf package if installed."""
    try:
        from gguf.constants import GGML_QUANT_SIZES
    except ImportError:
        return None
    return {int(kind): sizes for kind, sizes in GGML_QUANT_SIZES.items()}


def _read(handle: BinaryIO, path: Path, size: int) -> GgufHeader:
    if handle.read(4) != MAGIC:
        raise _Bad("not a GGUF file (it does not start with the GGUF magic)")
    raw = handle.read(4)
    if len(raw) != 4:
        raise _Bad("truncated: the header runs past the end of the file")
    order = "<" if struct.unpack("<I", raw)[0] & 0xFFFF else ">"  # as the gguf reader tells
    version = struct.unpack(order + "I", raw)[0]
    if version not in VERSIONS:
        raise _Bad(f"GGUF version {version} (lorakit reads versions 2 and 3)")
    reader = _Reader(handle, size, order)
    n_tensors = reader.count("the tensor count", 24)
    n_keys = reader.count("the metadata count", 13)
    header = GgufHeader(path, version)
    alignment = DEFAULT_ALIGNMENT
    seen: set[str] = set()
    for _ in range(n_keys):
        key = reader.name("a metadata key")
        if key in seen:
            raise _Bad(f"metadata {key} appears twice")
        seen.add(key)
        kind = reader.unpack("I")
        number = reader.value(kind, f"metadata {key}")
        if key == "general.alignment":
            if kind != _UINT32 or not number or number & (number - 1):
                raise _Bad("general.alignment must be a power of two (uint32)")
            alignment = number
        header.keys.append(key)
    sizes = _type_sizes()
    entries: list[tuple[str, int, tuple[int, ...], int]] = []
    for _ in range(n_tensors):
        name = reader.name("a tensor name")
        if name in header.tensors:
            raise _Bad(f"tensor {name} appears twice")
        n_dims = reader.unpack("I")
        if n_dims > MAX_DIMS:
            raise _Bad(f"tensor {name} has {n_dims} dimensions (at most {MAX_DIMS})")
        dims = tuple(reader.unpack("Q") for _ in range(n_dims))
        kind = reader.unpack("I")
        offset = reader.unpack("Q")
        entries.append((name, kind, dims, offset))
        header.tensors[name] = GgufTensor(kind, dims, offset, 0)
    data_start = -(-handle.tell() // alignment) * alignment
    for name, kind, dims, offset in entries:
        elements = 1
        for d in dims:
            elements *= d
        nbytes = 0
        if sizes is not None:
            if kind not in sizes:
                raise _Bad(f"tensor {name}: unknown GGML type {kind}")
            block, type_size = sizes[kind]
            if dims and dims[0] % block:
                raise _Bad(f"tensor {name}: {dims[0]} values per row is no whole number of blocks")
            nbytes = elements * type_size // block
        if offset % alignment:
            raise _Bad(f"tensor {name}: offset {offset} is not aligned to {alignment}")
        if data_start + offset + nbytes > size:
            raise _Bad(
                f"tensor {name}: its {nbytes} bytes at offset {offset} run past the end of "
                f"the {size}-byte file (truncated?)"
            )
        header.tensors[name] = GgufTensor(kind, dims, data_start + offset, nbytes)
    return header


def check_gguf(path: str | Path) -> GgufHeader:
    """The checked header of the GGUF file ``path``; a one-line :class:`UsageError` naming the
    file when a count, length or offset does not fit in it."""
    path = Path(path)
    try:
        with open(path, "rb", buffering=64 * 1024) as handle:
            size = os.fstat(handle.fileno()).st_size
            return _read(handle, path, size)
    except _Bad as exc:
        raise UsageError(f"not a valid GGUF file: {exc}", where=path) from None
    except FileNotFoundError:
        raise UsageError("file not found", where=path) from None
    except IsADirectoryError:
        raise UsageError("is a folder, expected a .gguf file", where=path) from None
    except OSError as exc:
        raise UsageError(f"cannot read: {exc.strerror or exc}", where=path) from None
