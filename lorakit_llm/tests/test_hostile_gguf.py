"""GGUF files from strangers: a header that claims more than the file holds is one line before
any GGUF reader sees it, and a base whose tensors are missing is refused instead of trained
on freshly initialised weights. Bombs run as the CLI in a subprocess, memory capped."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llm_helpers import llm_config

from lorakit.api import UsageError
from lorakit.testing import run_capped, run_cli, write_config


def gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def array_bomb(path: Path, item_type: int = 8, count: int = 2**63) -> Path:
    """60 bytes: no tensors, one metadata key whose array claims ``count`` items."""
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gguf_string(b"general.bomb")
    data += struct.pack("<IIQ", 9, item_type, count)
    path.write_bytes(data.ljust(60, b"\0"))
    return path


def one_line_error(done: Any, *fragments: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.startswith("lorakit: error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


@pytest.mark.parametrize("item_type", [0, 4, 8, 9])  # u8, u32, string, array of arrays
def test_inspect_refuses_an_array_bomb(tmp_path: Path, item_type: int) -> None:
    bomb = array_bomb(tmp_path / "tiny.gguf", item_type)
    assert bomb.stat().st_size == 60
    done = run_capped(["inspect", bomb], memory_gb=2, timeout=60)
    one_line_error(done, str(bomb), "an array claims 9223372036854775808 items")


def test_training_refuses_an_array_bomb(tmp_path: Path, assets: dict[str, Path]) -> None:
    """The base model itself is the bomb: refused before transformers' GGUF reader."""
    bomb = array_bomb(tmp_path / "model.gguf", item_type=0)
    config = write_config(
        tmp_path / "run.yaml", llm_config(assets, tmp_path / "out", base_model=str(bomb))
    )
    done = run_capped(["train", "--config", config, "--no-progress"], memory_gb=3, timeout=180)
    one_line_error(done, str(bomb), "not a valid GGUF file")
    assert not (tmp_path / "out").exists()


def test_a_gguf_base_with_missing_tensors_is_refused(
    tmp_path: Path, assets: dict[str, Path], capsys: Any
) -> None:
    from lorakit_llm.testing import write_gguf

    damaged = write_gguf(
        assets["model"], tmp_path / "base" / "damaged.gguf", drop=("model.layers.1.mlp.",)
    )
    config = write_config(
        tmp_path / "run.yaml",
        llm_config(assets, tmp_path / "out", base_model=str(damaged), max_steps=2),
    )
    code, out, err = run_cli(capsys, "train", "--config", config, "--no-progress")
    assert code == 2, out + err
    line = err.strip().splitlines()[-1]
    assert "3 weight(s) of the model are missing" in line and str(damaged) in line, err
    assert "model.layers.1.mlp.down_proj.weight" in line and "Traceback" not in err
    assert not list((tmp_path / "out").glob("**/*.safetensors"))


def test_a_complete_gguf_still_reads(assets: dict[str, Path]) -> None:
    from lorakit.api import check_gguf

    header = check_gguf(assets["gguf"])
    assert header.version == 3 and len(header.tensors) == 21
    assert "tokenizer.ggml.tokens" in header.keys
    size = assets["gguf"].stat().st_size
    assert all(t.start + t.size <= size for t in header.tensors.values())


# -- fuzzing the header check --------------------------------------------------------------

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


def checked_within_bounds(path: Path) -> None:
    """Success or one line naming the file, in well under a second; what passes the check
    is read by the gguf package without hanging or crashing."""
    from lorakit.api import check_gguf

    start = time.perf_counter()
    try:
        check_gguf(path)
    except UsageError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    else:
        from lorakit_llm.identify import _gguf_reader

        try:
            _gguf_reader(path)
        except UsageError as exc:
            assert "\n" not in str(exc)
    assert time.perf_counter() - start < 2.0


@pytest.fixture(scope="module")
def small_gguf(assets: dict[str, Path]) -> bytes:
    return assets["gguf"].read_bytes()


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_headers(small_gguf: bytes, tmp_path_factory: Any, data: Any) -> None:
    """Bytes of a real GGUF's header overwritten (counts, lengths, types, offsets)."""
    raw = bytearray(small_gguf)
    header_end = min(len(raw), 4096)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(4, header_end - 8))
        value = data.draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**62, 2**63, 2**64 - 1]))
        raw[at : at + 8] = value.to_bytes(8, "little")
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(raw))))
    path = tmp_path_factory.mktemp("fuzz") / "m.gguf"
    path.write_bytes(bytes(raw[:cut]))
    checked_within_bounds(path)


@FUZZ
@given(body=st.binary(max_size=300))
def test_fuzz_random_bodies(tmp_path_factory: Any, body: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "r.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + body)
    checked_within_bounds(path)
