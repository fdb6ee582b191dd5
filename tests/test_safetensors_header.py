"""safetensors headers are validated (by safetensors' own ``safe_open``) before use; a broken
file is one line, exit 2."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from lorakit.errors import UsageError
from lorakit.safetensors_header import read_header


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.safetensors"
    save_file(
        {"a": torch.ones(3, 4), "b": torch.zeros(2, dtype=torch.float16)},
        str(path),
        metadata={"k": "v"},
    )
    return path


def craft(tmp_path, header: dict, body: bytes = b"", claimed: int | None = None):
    raw = json.dumps(header).encode()
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(struct.pack("<Q", claimed if claimed is not None else len(raw)) + raw + body)
    return path


def test_a_good_file_reads(good):
    header = read_header(good)
    assert header.metadata == {"k": "v"}
    assert header.tensors["a"].shape == (3, 4) and header.tensors["b"].dtype == "F16"
    # the offsets point at the tensor's bytes, as safetensors itself reads them
    info = header.tensors["b"]
    raw = good.read_bytes()[header.data_start + info.start : header.data_start + info.end]
    assert torch.equal(torch.frombuffer(bytearray(raw), dtype=torch.float16), torch.zeros(2))


@pytest.mark.parametrize(
    "mutate,fragment",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-5]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:30]), "truncated"),
        (lambda p: p.write_bytes(b""), "too short"),
        (lambda p: p.write_bytes(b"\x00" * 8), "invalid JSON"),
        (
            lambda p: p.write_bytes(struct.pack("<Q", 2**60) + b"{}"),
            "header claims more than 100 MB",
        ),
        (lambda p: p.write_bytes(b"PK\x03\x04" + b"\x00" * 100), "truncated"),  # a zip (torch .pt)
    ],
)
def test_broken_files_are_refused(good, mutate, fragment):
    mutate(good)
    with pytest.raises(UsageError) as info:
        read_header(good)
    assert fragment in str(info.value) and str(good) in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    "header,body,fragment",
    [
        ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "truncated"),
        (
            {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},
            b"\0" * 8,
            "invalid shape, data type, or offset",
        ),
        (
            {"x": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 8,
            "unknown variant `Q9`",
        ),
        (
            {"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}},
            b"\0" * 8,
            "integer `-1`, expected usize",
        ),
        (
            {"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}},
            b"\0" * 8,
            "invalid offset for tensor `x`",
        ),
        (
            {
                "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "invalid offset for tensor `y`",
        ),
        ({"__metadata__": {"a": 1}}, b"", "expected a string"),
        ([1, 2], b"", "invalid type: sequence"),
        ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "offset"),
    ],
)
def test_crafted_headers_are_refused(tmp_path, header, body, fragment):
    path = craft(tmp_path, header, body)
    with pytest.raises(UsageError, match=fragment):
        read_header(path)
