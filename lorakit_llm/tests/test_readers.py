"""Dataset readers: every format, auto-detection, and errors that name file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lorakit_llm.testing import write_qa_jsonl

from lorakit.errors import DataError
from lorakit_llm import readers

FORMATS = ("qa", "prompt_completion", "alpaca", "chat")


def detected(path: Path) -> list[str]:
    names = ("chat", "alpaca", "qa", "prompt_completion", "text")
    return [n for n in names if getattr(readers, f"detect_{n}")(path)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_reads_and_is_detected(tmp_path: Path, fmt: str) -> None:
    path = write_qa_jsonl(tmp_path / f"{fmt}.jsonl", 5, fmt=fmt)
    assert detected(path) == [fmt]
    records = getattr(readers, f"read_{fmt}")(path)
    assert len(records) == 5
    assert records[0]["source"] == f"{path}:1"
    if fmt == "prompt_completion":
        assert records[0]["kind"] == "completion"
        assert records[0]["prompt"].startswith("Q: What is the capital of France?")
    else:
        messages = records[0]["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[-1]["content"] == "Paris."


def test_alpaca_input_and_system_prompt(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    rows = [
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "output": "hi"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = readers.read_alpaca(path, system_prompt="Be brief.")
    assert records[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert records[0]["messages"][1]["content"] == "Add.\n\n2 and 3"
    assert records[1]["messages"][1]["content"] == "Say hi."


def test_folder_reads_every_jsonl_in_order(tmp_path: Path) -> None:
    write_qa_jsonl(tmp_path / "b.jsonl", 3)
    write_qa_jsonl(tmp_path / "a.jsonl", 2)
    (tmp_path / "notes.md").write_text("not data")
    records = readers.read_qa(tmp_path)
    assert [r["source"].rsplit("/", 1)[1] for r in records] == [
        "a.jsonl:1",
        "a.jsonl:2",
        "b.jsonl:1",
        "b.jsonl:2",
        "b.jsonl:3",
    ]


def test_plain_text_and_sharegpt(tmp_path: Path) -> None:
    (tmp_path / "doc.txt").write_text("Once upon a time.\n")
    assert detected(tmp_path) == ["text"]
    assert readers.read_text(tmp_path)[0]["text"] == "Once upon a time.\n"
    share = tmp_path / "share.jsonl"
    share.write_text(
        json.dumps(
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
        )
        + "\n"
    )
    assert readers.read_chat(share)[0]["messages"][1] == {"role": "assistant", "content": "hello"}


def test_broken_line_names_file_and_line(tmp_path: Path) -> None:
    path = write_qa_jsonl(tmp_path / "qa.jsonl", 10)
    lines = path.read_text().splitlines()
    lines[3] = '{"question": "unterminated'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"^{path}:4: invalid JSON"):
        readers.read_qa(path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"question": "q"}, r":1: missing key 'answer'"),
        ({"question": "q", "answer": 3}, r":1: 'answer' must be a string"),
        ([1, 2], r":1: expected a JSON object"),
    ],
)
def test_bad_rows(tmp_path: Path, row: object, message: str) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message):
        readers.read_qa(path)


def test_chat_rows_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match="no assistant message"):
        readers.read_chat(path)
    path.write_text(json.dumps({"messages": [{"role": "robot", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match="unknown role 'robot'"):
        readers.read_chat(path)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no .jsonl, .json or .csv files"):
        readers.read_qa(tmp_path)


@pytest.mark.parametrize(
    ("header", "row", "fmt"),
    [
        ("question,answer", '"What is 2 plus 2?","4, of course."', "qa"),
        ("instruction,input,output", 'Add.,"2 and 2",4', "alpaca"),
        ("Prompt , Completion", '"Q: 2+2?\nA:"," 4"', "prompt_completion"),
    ],
)
def test_csv_files_read_like_jsonl(tmp_path: Path, header: str, row: str, fmt: str) -> None:
    path = tmp_path / "data.csv"
    path.write_text(f"\ufeff{header}\n{row}\n\n{row}\n", encoding="utf-8")  # BOM, blank line
    assert detected(path) == [fmt]
    records = getattr(readers, f"read_{fmt}")(path)
    assert len(records) == 2
    second = 4 + row.count("\n")  # a quoted newline makes a row two lines long
    assert [r["source"] for r in records] == [f"{path}:2", f"{path}:{second}"]
    if fmt == "qa":
        assert records[0]["messages"][1]["content"] == "4, of course."
    elif fmt == "alpaca":
        assert records[0]["messages"][0]["content"] == "Add.\n\n2 and 2"
    else:
        assert records[0]["prompt"] == "Q: 2+2?\nA:" and records[0]["completion"] == " 4"


def test_csv_errors_name_the_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("question,answer\nq1,a1\nq2,a2,extra\n")
    with pytest.raises(DataError, match=rf"{path}:3: 3 cells but the header names 2 columns"):
        readers.read_qa(path)
    path.write_text("question,reply\nq1,a1\n")
    with pytest.raises(DataError, match=rf"{path}:2: missing key 'answer'"):
        readers.read_qa(path)


def test_json_array_like_alpaca_data_json(tmp_path: Path) -> None:
    path = tmp_path / "alpaca_data.json"
    rows = [
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
    ]
    path.write_text(json.dumps(rows, indent=4))
    assert detected(path) == ["alpaca"]
    records = readers.read_alpaca(path)
    assert [r["messages"][-1]["content"] for r in records] == ["5", "hi"]
    assert [r["source"] for r in records] == [f"{path}:2", f"{path}:7"]  # where each object starts
    # A folder mixing JSONL, JSON and CSV reads all of them, by name.
    write_qa_jsonl(tmp_path / "qa" / "a.jsonl", 2)
    (tmp_path / "qa" / "b.json").write_text(json.dumps([{"question": "q", "answer": "a"}]))
    (tmp_path / "qa" / "c.csv").write_text("question,answer\nq,a\n")
    assert len(readers.read_qa(tmp_path / "qa")) == 4


def test_json_array_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('[\n  {"question": "q", "answer": "a"},\n  {"question": "q"}\n]\n')
    with pytest.raises(DataError, match=rf"{path}:3: missing key 'answer'"):
        readers.read_qa(path)
    path.write_text('[\n  {"question": "q", "answer": "a"},\n  {"question": "q" "answer": 1}\n]')
    with pytest.raises(DataError, match=rf"{path}:3: invalid JSON"):
        readers.read_qa(path)
    path.write_text('[\n  {"question": "q", "answer": "a"},\n  7\n]')
    with pytest.raises(DataError, match=rf"{path}:3: expected a JSON object, got int"):
        readers.read_qa(path)
