"""Fuzzing the data readers: random bytes in metadata files give only the documented errors.

The documented errors are lorakit.errors.UsageError and its subclasses (DataError); a
record a reader cannot use is reported, never an unhandled exception.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorakit.errors import UsageError

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
json_like = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.one_of(
            st.just(b'{"question": "q", "answer": "a"}'),
            st.just(b'{"messages": [{"role": "user", "content": "hi"}]}'),
            st.just(b'{"instruction": 1, "output": null}'),
            st.just(b'{"text": ["x"]}'),
            st.just(b"[1, 2]"),
            st.just(b'{"file_name": "../x.png", "text": "a"}'),
            st.binary(max_size=40),
        ),
        max_size=6,
    ).map(lambda lines: b"\n".join(lines)),
)


def _call(reader, data: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        (Path(tmp) / "a.png").write_bytes(b"\x89PNG\r\n")
        try:
            reader(Path(tmp) if name.startswith("metadata") else path)
        except UsageError as exc:
            assert "\n" not in exc.format()


@pytest.fixture(scope="module")
def llm_readers():
    readers = pytest.importorskip("lorakit_llm.readers")
    return [
        readers.read_qa,
        readers.read_alpaca,
        readers.read_prompt_completion,
        readers.read_chat,
        readers.read_text,
        readers.sniff,
    ]


@pytest.fixture(scope="module")
def sd_readers():
    readers = pytest.importorskip("lorakit_sd.data.readers")
    return readers


@FUZZ
@given(json_like)
def test_jsonl_readers(llm_readers, data):
    for reader in llm_readers:
        _call(reader, data, "train.jsonl")


@FUZZ
@given(json_like)
def test_metadata_jsonl_reader(sd_readers, data):
    _call(sd_readers.read_metadata_jsonl, data, "metadata.jsonl")


csv_like = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.one_of(
            st.just(b"file_name,text"),
            st.just(b"a.png,a caption"),
            st.just(b"a.png,"),
            st.just(b'"unterminated,quote'),
            st.just(b"../../etc/passwd,x"),
            st.just(b"\xff\xfe,\x00"),
            st.just(b"image,caption"),
            st.binary(max_size=30),
        ),
        max_size=6,
    ).map(lambda lines: b"\n".join(lines)),
)


@FUZZ
@given(csv_like)
def test_metadata_csv_reader(sd_readers, data):
    _call(sd_readers.read_metadata_csv, data, "metadata.csv")
