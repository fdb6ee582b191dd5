"""The bad-input corpus: each broken input is one line, exit 2, no traceback, no run folder.

Each folder in tests/bad_inputs/ holds a ``config.yaml`` (``{case}`` is the folder,
``{out}`` the run's output_dir, ``{sd_base}`` / ``{llm_base}`` tiny models when a case needs
one), any broken data files, and ``expect.txt``: fragments, one a line, that the error line
must all contain (the words that point the user the right way). Cases run
``lorakit train --config config.yaml``, or the command line in ``command.txt`` when there is
one (``{config}`` is the case's config), in-process through ``lorakit.cli.main``, the same
code the command runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lorakit.cli import main

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "expect.txt").exists())


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40, len(CASES)


def prepare(case: str, tmp_path: Path, bases: dict[str, str]) -> tuple[Path, Path]:
    folder = tmp_path / case
    shutil.copytree(CORPUS / case, folder, symlinks=True)
    out = tmp_path / "out"
    config = folder / "config.yaml"
    raw = config.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return config, out  # the case is the encoding itself
    text = text.replace("{case}", str(folder)).replace("{out}", str(out))
    for key, value in bases.items():
        text = text.replace("{" + key + "}", value)
    config.write_text(text)
    return config, out


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case, tmp_path, capsys, tiny_bases, request):
    if case.startswith(("sd-", "llm-")):
        from lorakit.plugins import set_plugins

        set_plugins(None)  # the installed backends, found through their entry points
    else:
        request.getfixturevalue("toy_plugins")
    config, out = prepare(case, tmp_path, tiny_bases)
    if "{sd_base}" in config.read_text(errors="replace") or "{llm_base}" in config.read_text(
        errors="replace"
    ):
        pytest.fail(f"{case}: no tiny base model for its placeholder")
    command = ["train", "--config", str(config), "--no-progress"]
    if (CORPUS / case / "command.txt").is_file():
        line = (CORPUS / case / "command.txt").read_text().strip()
        command = [word.replace("{config}", str(config)) for word in line.split()]
    with pytest.raises(SystemExit) as info:
        main(command)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert info.value.code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for expected in (CORPUS / case / "expect.txt").read_text().strip().splitlines():
        assert expected.strip() in lines[0], f"{case}: expected {expected!r} in {lines[0]!r}"
    assert not out.exists(), f"{case}: left a half-made run folder"
