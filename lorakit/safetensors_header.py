"""Read a safetensors file's header, validated by safetensors itself, before anything trusts it.

Before safetensors maps the file, the header is read here with plain bounded reads: its
length (at most 100 MB, and inside the file), its JSON, and every tensor's byte range against
the file's size and against its shape × dtype. A crafted header that claims a terabyte is one
line naming the file and the tensor, never a mapping. ``safetensors.safe_open`` then checks
the rest (offsets that overlap or leave gaps, the file not fully covered) without reading
the tensors; this module turns its refusal into one line naming the file, and hands back the
tensor names, dtypes, shapes, byte offsets and the metadata. It opens the file for numpy, so
no torch is imported.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.errors import UsageError

#: What safetensors says → what the user reads (its other reasons are shown as it words them).
REASONS = {
    "header too small": "too short",
    "header too large": "header claims more than 100 MB",
    "invalid header length": "truncated: the header runs past the end of the file",
    "incomplete metadata, file not fully covered": (
        "truncated: the tensors do not cover the file, or bytes follow them"
    ),
}


#: The largest header safetensors reads (its own limit).
MAX_HEADER = 100_000_000
#: Bits per value of the dtypes safetensors knows (others: left to safetensors to judge).
DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "C64": 64,
}


def _size(n: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _ints(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    )


def _tensor_problem(name: str, entry: Any, data_size: int) -> str | None:
    """Why tensor ``name`` cannot fit in ``data_size`` bytes, or None (what else is wrong
    with an entry, safetensors says in its own words)."""
    if not isinstance(entry, dict) or not _ints(entry.get("shape")):
        return None
    shape, dtype = entry["shape"], entry.get("dtype")
    raw: Any = entry.get("data_offsets")
    offsets: list[int] = list(raw) if _ints(raw) else []
    bits = DTYPE_BITS.get(dtype) if isinstance(dtype, str) else None
    needed = -(-math.prod(shape) * bits // 8) if bits is not None else 0
    span = offsets[1] - offsets[0] if len(offsets) == 2 else None
    if span is not None and span != needed and bits is not None:
        return None  # shape and offsets disagree: safetensors' "invalid shape" says it
    if needed > data_size:
        return (
            f"truncated: tensor {name} claims {_size(needed)} ({dtype} {shape}) "
            f"but the file holds {_size(data_size)} of tensor data"
        )
    if len(offsets) == 2 and offsets[1] > data_size:
        return (
            f"truncated: tensor {name} ends at byte {offsets[1]} of the data, but "
            f"the file holds {_size(data_size)} of tensor data"
        )
    return None


def _precheck(path: Path) -> None:
    """The header's length, read with bounds, and every tensor inside the file."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        raw = handle.read(8)
        if len(raw) < 8:
            raise ValueError("too short")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER:
            raise ValueError(f"header claims more than 100 MB ({_size(length)})")
        if 8 + length > size:
            raise ValueError("truncated: the header runs past the end of the file")
        text = handle.read(length)
    try:
        entries = json.loads(text)
    except (ValueError, RecursionError):
        return  # safetensors says what is wrong with it
    if isinstance(entries, dict):
        for name, entry in entries.items():
            problem = (
                None if name == "__metadata__" else _tensor_problem(name, entry, size - 8 - length)
            )
            if problem:
                raise ValueError(problem)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the file: its dtype (``F32``...), shape and bytes in the data section."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Header:
    """A validated header: ``tensors`` by name, the ``__metadata__`` strings, and where the
    data section starts (``tensors[name].start`` counts from there)."""

    path: Path
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]
    data_start: int


def read_header(path: str | Path) -> Header:
    """The header of ``path``, validated; a :class:`UsageError` naming the file if broken."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise UsageError("file not found", where=path)
    if path.is_dir():
        raise UsageError("is a folder, expected a .safetensors file", where=path)
    try:
        _precheck(path)  # before safetensors maps the file
    except ValueError as exc:
        raise UsageError(f"not a valid safetensors file ({exc})", where=path) from None
    except OSError as exc:
        raise UsageError(f"cannot read: {exc.strerror or exc}", where=path) from None
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            shapes = {name: f.get_slice(name) for name in f.keys()}  # noqa: SIM118 - safe_open is no dict
            kinds = {n: (s.get_dtype(), tuple(s.get_shape())) for n, s in shapes.items()}
    except SafetensorError as exc:
        raise UsageError(f"not a valid safetensors file ({_reason(exc)})", where=path) from None
    except OSError as exc:
        raise UsageError(f"cannot read: {exc.strerror or exc}", where=path) from None
    with path.open("rb") as handle:  # both checks passed: the header is sound
        (length,) = struct.unpack("<Q", handle.read(8))
        entries = json.loads(handle.read(length))
    tensors = {
        name: TensorInfo(dtype, shape, *entries[name]["data_offsets"])
        for name, (dtype, shape) in kinds.items()
    }
    return Header(path, metadata, tensors, 8 + length)


def _reason(exc: Exception) -> str:
    text = str(exc).removeprefix("Error while deserializing header: ").strip()
    return REASONS.get(text, text.split(" at line ")[0])
