"""A damaged checkpoint never resumes in silence: each carries a manifest (sizes and
SHA-256s, written last); resume names the damaged file in one line and offers the previous
checkpoint, ``--resume`` takes the newest intact one and says so, and a broken file of a
checkpoint without a manifest is still one line naming it. The reader is fuzzed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import toy_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorakit.engine.manifest import damage, read_state, read_tensors
from lorakit.errors import UsageError
from lorakit.runfolder import MANIFEST, RECORD, STATE
from lorakit.testing import run_cli, write_config


def _train(tmp_path: Path, capsys) -> tuple[Path, Path]:
    """A toy run of 4 steps with checkpoints at steps 2 and 4 (the config, the run)."""
    data = toy_config(tmp_path, max_steps=4, save_steps=2, epochs=1)
    cfg = write_config(tmp_path / "a.yaml", data)
    code, _, err = run_cli(capsys, "train", "--config", cfg)
    assert code == 0, err
    return cfg, tmp_path / "run"


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _overwrite(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-8:] = b"\x7f" * 8  # tensor bytes: still a valid safetensors file
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated": (_truncate, "is truncated"),
    "emptied": (_empty, "is empty"),
    "overwritten": (_overwrite, "has changed since it was written"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_named_and_resume_takes_the_newest_intact_one(
    tmp_path, toy_plugins, capsys, kind
):
    cfg, out = _train(tmp_path, capsys)
    step2, step4 = out / "checkpoints" / "step-2", out / "checkpoints" / "step-4"
    assert json.loads((step4 / MANIFEST).read_text())["files"]["lora.safetensors"]["size"] > 0
    spoil, said = DAMAGE[kind]
    spoil(step4 / "lora.safetensors")
    record = (out / RECORD).read_bytes()

    code, _, err = run_cli(capsys, "train", "--config", cfg, "--resume", step4)
    assert code == 2
    line = _one_line(err)
    assert f"{step4 / 'lora.safetensors'} {said}" in line, line
    assert f"resume from the previous one: --resume {step2}" in line, line
    assert (out / RECORD).read_bytes() == record  # nothing written

    code, _, err = run_cli(capsys, "train", "--config", cfg, "--resume", "--set", "max_steps=5")
    assert code == 0, err
    assert f"skipping a damaged checkpoint: {step4 / 'lora.safetensors'} {said}" in err
    assert f"resuming from {step2}, the newest intact checkpoint" in err
    assert json.loads((out / RECORD).read_text())["resumed_from"] == str(step2)


@pytest.mark.parametrize(
    ("name", "spoil", "said"),
    [
        ("lora.safetensors", _truncate, "is not a readable safetensors file"),
        ("optimizer.safetensors", _empty, "is empty"),
        (STATE, _empty, "is empty"),
        (STATE, lambda p: p.write_text('{"step": "x"}'), "is not a lorakit trainer state"),
        ("scheduler.json", lambda p: p.write_text("{"), "is not valid JSON"),
        ("rng.json", lambda p: p.write_text("{}"), "does not fit this run"),
    ],
)
def test_a_broken_file_of_a_checkpoint_without_a_manifest_is_one_line_naming_it(
    tmp_path, toy_plugins, capsys, name, spoil, said
):
    cfg, out = _train(tmp_path, capsys)
    step4 = out / "checkpoints" / "step-4"
    (step4 / MANIFEST).unlink()  # as an older lorakit wrote it
    spoil(step4 / name)
    code, _, err = run_cli(capsys, "train", "--config", cfg, "--resume", step4)
    assert code == 2
    line = _one_line(err)
    assert str(step4 / name) in line and said in line, line
    for raw in ("SafetensorError", "JSONDecodeError", "KeyError", "Traceback"):
        assert raw not in err


FILES = st.sampled_from([MANIFEST, STATE, "lora.safetensors"])
CONTENT = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda d: json.dumps(d).encode(), st.dictionaries(st.text(max_size=8), st.integers())
    ),
    st.builds(
        lambda n, body: n.to_bytes(8, "little") + body,
        st.integers(0, 2**64 - 1),
        st.binary(max_size=200),
    ),
    st.builds(
        lambda files: json.dumps({"version": 1, "files": files}).encode(),
        st.dictionaries(
            st.sampled_from([STATE, "lora.safetensors", "../x", "a/b"]),
            st.fixed_dictionaries(
                {"size": st.integers(-2, 400), "sha256": st.text("0123456789abcdef", max_size=64)}
            ),
        ),
    ),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(FILES, CONTENT, min_size=1))
def test_fuzz_the_checkpoint_reader_ends_in_success_or_one_line(tmp_path, files):
    folder = tmp_path / "fuzz" / "step-1"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    start = time.monotonic()
    problem = damage(folder)
    assert problem is None or "\n" not in problem
    for read in (read_state, lambda f: read_tensors(f, "lora.safetensors")):
        try:
            read(folder)
        except UsageError as exc:
            assert "\n" not in exc.format() and str(folder) in exc.format()
    assert time.monotonic() - start < 5
