"""Read a safetensors file's header, validated by safetensors itself, before anything trusts it.

``safetensors.safe_open`` checks what a truncated download or a crafted file gets wrong (the
header's size and JSON, dtypes, shapes, offsets that overlap, leave gaps or run past the
end) without reading the tensors; this module turns its refusal into one line naming the
file, and hands back the tensor names, dtypes, shapes, byte offsets and the metadata. It
opens the file for numpy, so no torch is imported.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

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
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            shapes = {name: f.get_slice(name) for name in f.keys()}  # noqa: SIM118 - safe_open is no dict
            kinds = {n: (s.get_dtype(), tuple(s.get_shape())) for n, s in shapes.items()}
    except SafetensorError as exc:
        raise UsageError(f"not a valid safetensors file ({_reason(exc)})", where=path) from None
    except OSError as exc:
        raise UsageError(f"cannot read: {exc.strerror or exc}", where=path) from None
    with path.open("rb") as f:  # safetensors accepted it: the offsets are sound
        (length,) = struct.unpack("<Q", f.read(8))
        entries = json.loads(f.read(length))
    tensors = {
        name: TensorInfo(dtype, shape, *entries[name]["data_offsets"])
        for name, (dtype, shape) in kinds.items()
    }
    return Header(path, metadata, tensors, 8 + length)


def _reason(exc: Exception) -> str:
    text = str(exc).removeprefix("Error while deserializing header: ").strip()
    return REASONS.get(text, text.split(" at line ")[0])
