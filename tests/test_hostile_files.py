"""Files from strangers, tried as an attacker would: each through the CLI a user runs, in a
subprocess with its memory capped (RLIMIT_AS) and a timeout, so a bomb fails the test rather
than the machine. Each ends in one line naming the file (exit 2), or is shown as plain text."""

from __future__ import annotations

import csv
import json
import pickle
import struct
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorakit.testing import run_capped, run_cli, write_config

ESC = "\x1b"


def one_line_error(done, *fragments: str) -> str:
    """The one error line of a finished command that must have failed with exit 2."""
    err = done.stderr
    assert done.returncode == 2, (done.returncode, err[-2000:])
    lines = [line for line in err.splitlines() if line.startswith("lorakit: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


# -- 1. unpickling comes from the person, not the file ------------------------------------


class PickleBomb:
    """Unpickled, it creates ``marker``: proof that the file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def pickled_base(tiny_bases, tmp_path):
    import torch
    from safetensors.torch import load_file

    marker = tmp_path / "the-pickle-ran"
    ckpt = tmp_path / "shared" / "model.ckpt"
    ckpt.parent.mkdir()
    state = load_file(tiny_bases["sd_single"])
    torch.save({"state_dict": state, "payload": PickleBomb(marker)}, ckpt)
    return ckpt, marker


def sd_config(tmp_path: Path, base: Path, config_dir: str, **sd) -> Path:
    from lorakit_sd.testing import write_tiny_images

    data = write_tiny_images(tmp_path / "data", 2)
    return write_config(
        tmp_path / "shared" / "run.yaml",
        {
            "task_type": "image-generation",
            "base_model": str(base),
            "train_data_dir": str(data),
            "output_dir": str(tmp_path / "out"),
            "max_steps": 1,
            "batch_size": 1,
            "sd": {"base_config": config_dir, "resolution": 64, **sd},
        },
    )


def test_a_shared_config_cannot_opt_in_to_unpickling(pickled_base, tiny_bases, tmp_path):
    """The page launches ``lorakit train --config FILE`` and never passes the flag: a config
    that says ``sd.allow_unsafe_pickle: true`` beside a .ckpt is refused, its code never runs."""
    from lorakit_ui.runs import train_command

    ckpt, marker = pickled_base
    config = sd_config(tmp_path, ckpt, tiny_bases["sd_config"], allow_unsafe_pickle=True)
    for resume in (False, True):  # Start and Resume on the page
        command = train_command(config, resume)
        assert command[1:4] == ["-m", "lorakit.cli", "train"]
        assert not any("pickle" in part for part in command)
        done = run_capped(command[3:], timeout=180)
        one_line_error(done, str(config), "allow_unsafe_pickle", "--allow-unsafe-pickle")
        assert not marker.exists()
        assert not (tmp_path / "out").exists()


def test_the_page_never_passes_its_own_opt_in_to_the_runs_it_starts(
    pickled_base, tiny_bases, tmp_path, monkeypatch
):
    """``LORAKIT_ALLOW_UNSAFE_PICKLE=1`` in the shell that started ``lorakit ui`` is the
    person's opt-in for their own commands: a run the page starts (a shared run folder,
    resumed with one click) runs without it and refuses the pickle."""
    from lorakit_ui.runs import run_environment, train_command

    monkeypatch.setenv("LORAKIT_ALLOW_UNSAFE_PICKLE", "1")
    env = run_environment()
    assert "LORAKIT_ALLOW_UNSAFE_PICKLE" not in env and env["PYTHONUNBUFFERED"] == "1"
    monkeypatch.delenv("LORAKIT_ALLOW_UNSAFE_PICKLE")  # run_capped adds this process's env
    ckpt, marker = pickled_base
    config = sd_config(tmp_path, ckpt, tiny_bases["sd_config"])
    done = run_capped(train_command(config, False)[3:], timeout=180, env=env)
    one_line_error(done, str(ckpt), "--allow-unsafe-pickle")
    assert not marker.exists()


def test_unpickling_needs_the_flag_on_the_command(pickled_base, tiny_bases, tmp_path):
    ckpt, marker = pickled_base
    config_dir = tiny_bases["sd_config"]
    args = [
        "sample",
        "--backend",
        "sd",
        "--base",
        ckpt,
        "--base-config",
        config_dir,
        "-p",
        "a cat",
        "--steps",
        "1",
        "--width",
        "64",
        "--height",
        "64",
        "-o",
        tmp_path / "samples",
    ]
    done = run_capped(args, timeout=180)
    one_line_error(done, str(ckpt), "--allow-unsafe-pickle", "LORAKIT_ALLOW_UNSAFE_PICKLE")
    assert not marker.exists()
    done = run_capped([*args, "--allow-unsafe-pickle"], timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert marker.exists()  # the person allowed it: the file's code ran (a real pickle)
    assert f"unpickling {ckpt} (allowed on this command)" in done.stderr


def test_the_run_header_says_unpickling_is_allowed(toy_plugins, tmp_path, monkeypatch, capsys):
    from conftest import toy_config

    from lorakit.unsafe_pickle import ENV

    monkeypatch.setenv(ENV, "0")  # restored after the test: the flag sets it in-process
    config = write_config(tmp_path / "c.yaml", toy_config(tmp_path, epochs=1))
    code, out, err = run_cli(capsys, "train", "--config", config, "--no-progress")
    assert code == 0 and "unpickling allowed" not in err, err
    config = write_config(tmp_path / "d.yaml", toy_config(tmp_path / "d", epochs=1))
    code, out, err = run_cli(
        capsys, "train", "--config", config, "--no-progress", "--allow-unsafe-pickle"
    )
    assert code == 0, err
    assert "unpickling allowed on this command (--allow-unsafe-pickle" in err


@pytest.mark.parametrize("verb", ["sample", "merge", "export"])
def test_a_pickled_lora_is_refused_by_every_command(tmp_path, verb):
    marker = tmp_path / "the-pickle-ran"
    lora = tmp_path / "style.pt"
    lora.write_bytes(pickle.dumps({"payload": PickleBomb(marker)}))
    args = {
        "sample": ["sample", "--lora", lora, "--base", "x/y", "-p", "a cat"],
        "merge": ["merge", "--lora", lora, "--base", "x/y", "-o", tmp_path / "m"],
        "export": ["export", lora, "--to", "diffusers"],
    }[verb]
    done = run_capped(args, memory_gb=2, timeout=120)
    one_line_error(done, str(lora), "pickled file can run code")
    assert not marker.exists()


# -- 2. bounded parsing ----------------------------------------------------------------


def billion_laughs() -> str:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i, prev in zip("bcdefghi", "abcdefgh", strict=True):
        lines.append(f"{i}: &{i} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("command", [["config", "validate"], ["train", "--config"]])
def test_a_yaml_alias_bomb_fails_fast(tmp_path, command):
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text(billion_laughs())
    assert bomb.stat().st_size < 400
    done = run_capped([*command, bomb], memory_gb=2, timeout=60)
    one_line_error(done, str(bomb), "aliases expand to more than 100000 values")


def test_the_page_validate_refuses_an_alias_bomb(tmp_path):
    """The new-run form's check (``lorakit_ui.forms.check``, what /api/validate runs) with the
    bomb typed under "other keys": an answer within the time and memory caps."""
    script = tmp_path / "page_check.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\nfrom lorakit_ui.forms import EXTRA, check\n"
        "values = {EXTRA: Path(sys.argv[1]).read_text(), 'base_model': 'x/y'}\n"
        "print('ERROR', check(values, 'sd', Path(sys.argv[2])).error)\n"
    )
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text(billion_laughs())
    done = run_capped(
        [bomb, tmp_path / "run.yaml"],
        module=str(script.stem),
        memory_gb=2,
        timeout=90,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "aliases expand to more than 100000 values" in done.stdout


def write_png(path: Path, width: int, height: int, pixel: bytes = b"\x10\x20\x30\x80") -> Path:
    """An 8-bit RGBA PNG of one colour, written row by row (never held in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    compressor = zlib.compressobj(6)
    row = b"\0" + pixel * width
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def pixel_bomb(tmp_path_factory) -> Path:
    path = write_png(tmp_path_factory.mktemp("bomb") / "huge" / "poster.png", 10_000, 10_000)
    assert path.stat().st_size < 600_000
    return path


def test_label_refuses_a_huge_pixel_png(pixel_bomb):
    done = run_capped(
        ["label", pixel_bomb.parent, "--labeler", "palette", "--dry-run", "--no-progress"],
        memory_gb=2.5,
        timeout=120,
    )
    one_line_error(done, "poster.png", "10000x10000", "pixel budget")


def test_training_refuses_a_huge_pixel_png(pixel_bomb, tiny_bases, tmp_path):
    from lorakit_sd.testing import write_tiny_images

    data = write_tiny_images(tmp_path / "data", 2)
    (data / "poster.png").write_bytes(pixel_bomb.read_bytes())
    config = write_config(
        tmp_path / "run.yaml",
        {
            "task_type": "image-generation",
            "base_model": tiny_bases["sd_single"],
            "train_data_dir": str(data),
            "output_dir": str(tmp_path / "out"),
            "max_steps": 1,
            "sd": {"base_config": tiny_bases["sd_config"], "dataset_format": "caption_files"},
        },
    )
    for image in data.glob("*.png"):
        image.with_suffix(".txt").write_text("a picture")
    done = run_capped(["train", "--config", config, "--no-progress"], memory_gb=3, timeout=180)
    one_line_error(done, "poster.png", "10000x10000", "pixel budget")
    assert not (tmp_path / "out").exists()


def test_transparency_is_composited_without_float64(tmp_path):
    """A 36-megapixel RGBA PNG (inside the budget) labels in 1.5 GB: float64 compositing
    needed about 3 GB for it."""
    write_png(tmp_path / "big" / "wide.png", 6000, 6000)
    done = run_capped(
        ["label", tmp_path / "big", "--labeler", "palette", "--dry-run", "--no-progress"],
        memory_gb=1.5,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wide.png," in done.stdout


def terabyte_lora(path: Path) -> Path:
    n = 2**40 // 4
    key = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"
    header = json.dumps({key: {"dtype": "F32", "shape": [n], "data_offsets": [0, n * 4]}})
    raw = header.encode() + b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 64)
    return path


@pytest.mark.parametrize(
    "command",
    [
        ["export", "{lora}", "--to", "diffusers"],
        ["merge", "--lora", "{lora}", "--base", "{base}", "-o", "{out}"],
        ["inspect", "{lora}"],
    ],
)
def test_a_safetensors_header_claiming_a_terabyte_is_one_line(tmp_path, tiny_bases, command):
    lora = terabyte_lora(tmp_path / "huge.safetensors")
    names = {"{lora}": str(lora), "{base}": tiny_bases["sd_single"], "{out}": str(tmp_path / "m")}
    done = run_capped([names.get(a, a) for a in command], memory_gb=2.5, timeout=120)
    one_line_error(done, str(lora), "claims 1.1 TB", "the file holds 64 bytes")


# -- 4. text from files is shown as text -------------------------------------------------

HOSTILE = "\x1b[2J\x1b]0;owned\x07[red]loud[/red]\rfake line\u202eevil"


def assert_shown_as_text(output: str, *, lines_split: bool = False) -> None:
    """No raw control reaches the terminal; each is shown (a reader that splits lines may
    have split at the ``\r`` instead: ``lines_split``)."""
    assert ESC not in output and "\r" not in output and "\x07" not in output
    assert "\u202e" not in output
    assert "\\x1b[2J" in output and "[red]loud[/red]" in output and "\\u202e" in output
    assert lines_split or "\\rfake line" in output


def test_inspect_shows_metadata_as_text(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "lora.safetensors"
    tensors = {
        "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
        "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4),
    }
    save_file(tensors, str(path), metadata={"ss_output_name": HOSTILE, "note": HOSTILE})
    code, out, err = run_cli(capsys, "inspect", str(path), "--metadata")
    assert code == 0, err
    assert_shown_as_text(out)


def test_label_dry_run_shows_captions_as_text(tmp_path):
    from lorakit_sd.testing import write_tiny_images

    data = write_tiny_images(tmp_path / "data", 2)
    names = sorted(p.name for p in data.glob("*.png"))
    (data / "metadata.csv").unlink(missing_ok=True)
    rows = [["file_name", "text"], [names[0], HOSTILE]]
    with (data / "metadata.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    done = run_capped(
        ["label", data, "--labeler", "palette", "--append", "--dry-run", "--no-progress"],
        memory_gb=2,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "owned" in done.stdout  # the caption is there, as text
    assert_shown_as_text(done.stdout)


def test_the_update_check_shows_the_changelog_as_text(monkeypatch, tmp_path, capsys):
    from test_update_check import Index

    from lorakit.diagnostics import update_check
    from lorakit.plugins import build_plugins, set_plugins

    server = Index()
    try:
        monkeypatch.setenv("LORAKIT_INDEX_URL", server.url)
        monkeypatch.setenv("LORAKIT_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.delenv("LORAKIT_NO_UPDATE_CHECK", raising=False)
        monkeypatch.setattr(update_check, "TIMEOUT_S", 20.0)
        changelog = f"# lorakit\n\n## [99.0.0] - 2030-01-01\n\n### Added\n- {HOSTILE}\n"
        server.publish("lorakit", "99.0.0", changelog)
        set_plugins(build_plugins(entry_points=False))
        code, out, err = run_cli(capsys, "version", "--check")
    finally:
        set_plugins(None)
        server.close()
    assert code == 0 and "99.0.0 is out" in out, out + err
    assert_shown_as_text(out + err, lines_split=True)


def test_the_terminal_helper_escapes_every_control():
    from lorakit.terminal_text import printable, rich_text

    assert printable("a\x1b[31mb\r\n\tc\x7f\x9b\u2028") == "a\\x1b[31mb\\r\\n\\tc\\x7f\\x9b\\u2028"
    assert printable("two\nlines\x1b\ttab", newlines=True) == "two\nlines\\x1b\ttab"
    assert rich_text("[bold]x[/bold]\x1b") == "\\[bold]x\\[/bold]\\x1b"
    assert printable("ordinary text, ünïcödé 🙂") == "ordinary text, ünïcödé 🙂"


# -- 5. smaller --------------------------------------------------------------------------


def test_config_migrate_does_not_call_an_invalid_file_current(tmp_path, toy_plugins, capsys):
    from conftest import toy_config

    config = write_config(tmp_path / "c.yaml", {**toy_config(tmp_path), "lora_rnk": 4})
    code, out, err = run_cli(capsys, "config", "migrate", str(config))
    assert code == 2, out + err
    assert "already current" not in out + err
    assert "lora_rnk" in err and str(config) in err and "Traceback" not in err


# -- fuzzing the config reader with aliases ------------------------------------------------


def _ref(anchors: int) -> st.SearchStrategy[str]:
    """A scalar, or an alias of one of the first ``anchors`` anchors."""
    scalar = st.just('"x"')
    return (
        scalar if not anchors else st.one_of(scalar, st.integers(0, anchors - 1).map("*n{}".format))
    )


@st.composite
def alias_yaml(draw: st.DrawFn) -> str:
    """Anchored lists and mappings whose items are aliases of earlier anchors, merge keys
    included: from harmless to bombs of any width and depth."""
    lines: list[str] = []
    for i in range(draw(st.integers(1, 12))):
        refs = draw(st.lists(_ref(i), max_size=12))
        if draw(st.booleans()):
            lines.append(f"n{i}: &n{i} [{', '.join(refs)}]")
        else:
            merges = [r for r in refs if r.startswith("*")]
            body = [f"k{n}: {r}" for n, r in enumerate(refs)]
            if merges and draw(st.booleans()):
                body.insert(0, f"<<: [{', '.join(merges)}]")  # merge keys copy mappings in
            lines.append(f"n{i}: &n{i} {{{', '.join(body)}}}")
    if draw(st.booleans()):
        depth = draw(st.integers(1, 200))
        lines.append(f"deep: {'[' * depth}1{']' * depth}")
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=alias_yaml())
def test_fuzz_aliases_end_fast_in_success_or_one_line(toy_plugins, tmp_path_factory, text):
    from lorakit.config import load_config
    from lorakit.errors import ConfigError

    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(text)
    start = time.perf_counter()
    try:
        load_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    assert time.perf_counter() - start < 2.0


def test_an_error_naming_a_hostile_file_name_is_one_line_of_text(tmp_path):
    """A data folder someone else made: its file names reach the error line as text."""
    name = "x\x1b[2J\rline\nbreak.yaml"
    config = tmp_path / name
    config.write_text("lora_rank: [\n")
    done = run_capped(["config", "validate", config], memory_gb=2, timeout=60)
    line = one_line_error(done, "invalid YAML")
    assert "x\\x1b[2J\\rline" in line and ESC not in done.stderr and "\r" not in done.stderr
