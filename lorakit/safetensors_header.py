"""Read and validate a safetensors header before anything trusts the file.

A safetensors file is an 8-byte little-endian header length, a JSON header, then the
tensor bytes. A truncated download or a crafted file can claim a huge header or offsets
past the end; this module checks sizes, dtypes, shapes and offsets, and reports a bad file
as one line, before torch or safetensors touches the data.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.errors import UsageError

MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
    "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
    "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1,
}  # fmt: skip


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Header:
    path: Path
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]


def _bad(path: Path, why: str) -> UsageError:
    return UsageError(f"not a valid safetensors file ({why})", where=path)


def read_header(path: str | Path) -> Header:
    """The validated header of ``path``; a :class:`UsageError` naming the file if broken."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _bad(path, f"{size} bytes, too short")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES:
                raise _bad(path, f"header claims {length} bytes")
            if 8 + length > size:
                raise _bad(path, "truncated: the header runs past the end of the file")
            raw = f.read(length)
    except FileNotFoundError:
        raise UsageError("file not found", where=path) from None
    except IsADirectoryError:
        raise UsageError("is a folder, expected a .safetensors file", where=path) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _bad(path, "the header is not JSON") from None
    if not isinstance(data, dict):
        raise _bad(path, "the header is not a JSON object")
    metadata = data.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _bad(path, "__metadata__ must map strings to strings")
    body = size - 8 - length
    tensors: dict[str, TensorInfo] = {}
    for name, entry in data.items():
        tensors[name] = _tensor(path, name, entry, body)
    spans = sorted((t.start, t.end, n) for n, t in tensors.items() if t.end > t.start)
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:], strict=False):
        if start_b < end_a:
            raise _bad(path, f"tensors {a} and {b} overlap")
    return Header(path, metadata, tensors)


def _tensor(path: Path, name: str, entry: Any, body: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _bad(path, f"entry {name} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise _bad(path, f"{name}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _bad(path, f"{name}: bad shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _bad(path, f"{name}: bad data_offsets {offsets!r}")
    if offsets[1] > body:
        raise _bad(path, f"truncated: {name} ends at byte {offsets[1]} of a {body}-byte body")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise _bad(path, f"{name}: {offsets[1] - offsets[0]} bytes for shape {shape} {dtype}")
    return TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])


def load_checked(path: str | Path, device: str = "cpu") -> tuple[dict[str, Any], dict[str, str]]:
    """Validate, then load every tensor: (tensors, metadata)."""
    from safetensors.torch import load_file

    header = read_header(path)
    return load_file(str(path), device=device), header.metadata
