"""Outside ``families/``, no module of lorakit-sd names a model family.

Everything about a family lives in its folder; the backend, the data pipeline, the LoRA files,
``plan``, ``merge``, ``sample`` and the demo ask the family. The words come from the
registered families themselves (names, labels, base-model versions, architectures, template
names), so a new family's words are checked too. Code is checked, not prose: string literals
(docstrings aside), names, attributes and imported modules.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lorakit_sd"
#: module -> how many family words it may hold (none: every module asks the families)
ALLOWED: dict[str, int] = {}


def family_words() -> set[str]:
    from lorakit_sd import families

    words: set[str] = set()
    for family in families.all_families():
        words.add(family.name)
        stem = family.name.rstrip("0123456789")
        if len(stem) >= 4:
            words.add(stem)  # flux1 -> flux
        words.update(part.strip() for part in family.label.split("/"))
        words.add(family.base_model_version.split("_base")[0])
        words.add(family.architecture.removesuffix("/lora").removesuffix("-base"))
        for name, (_, path) in families.spec(family.name).templates().items():
            words.update((name, Path(path).stem))
    return {w.lower() for w in words if len(w) >= 3}


def code_words(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        text = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text = node.value
        elif isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, ast.Attribute):
            text = node.attr
        elif isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef | ast.alias):
            text = node.name
        elif isinstance(node, ast.ImportFrom):
            text = node.module
        elif isinstance(node, ast.arg):
            text = node.arg
        if text:
            found.append((getattr(node, "lineno", 0), text))
    return found


def word_pattern(word: str) -> str:
    """A family word, any case; a short alphabetic one (``wan``) not followed by a lower-case
    letter, so English words that start with it (``wanted``) are not names (``WanPipeline``,
    ``wan_lora`` are)."""
    escaped = f"(?i:{re.escape(word)})"
    return escaped + "(?![a-z])" if word.isalpha() and len(word) <= 3 else escaped


def offenders(words: set[str], root: Path = SRC) -> dict[str, list[str]]:
    pattern = re.compile("|".join(word_pattern(w) for w in sorted(words, key=len, reverse=True)))
    out: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("families/"):
            continue
        hits = [
            f"{rel}:{line}: {text[:60]!r}"
            for line, text in code_words(path)
            if pattern.search(text)
        ]
        if hits:
            out[rel] = hits
    return out


def test_the_words_come_from_the_registered_families():
    words = family_words()
    assert {"sd1", "sdxl", "sd3", "flux1", "flux"} <= words
    assert {"sd1.x", "sd3.5", "flux.1", "stable-diffusion-xl-v1", "sd15", "sd35"} <= words


def test_no_module_outside_families_names_a_family():
    found = offenders(family_words())
    extra = {rel: hits for rel, hits in found.items() if len(hits) > ALLOWED.get(rel, 0)}
    assert not extra, "family names outside families/:\n" + "\n".join(
        hit for hits in extra.values() for hit in hits
    )


def test_the_check_catches_a_family_switch(tmp_path):
    (tmp_path / "families").mkdir()
    (tmp_path / "families" / "x.py").write_text('NAME = "sdxl"\n')  # inside: allowed
    (tmp_path / "backend.py").write_text(
        '"""Docs may say SDXL."""\n\n\ndef f(family):\n'
        '    return family == "sdxl" or "FluxPipeline"\n'
    )
    found = offenders(family_words(), tmp_path)
    assert list(found) == ["backend.py"]
    assert sorted(h.split(":", 2)[2] for h in found["backend.py"]) == [
        " 'FluxPipeline'",
        " 'sdxl'",
    ]


def test_a_short_family_name_is_a_name_not_a_word_prefix(tmp_path):
    (tmp_path / "data.py").write_text(
        'def f(wanted):\n    return wanted or "WanPipeline" or "wan_lora" or "WAN"\n'
    )
    found = offenders({"wan"}, tmp_path)
    assert sorted(h.split(":", 2)[2] for h in found["data.py"]) == [
        " 'WAN'",
        " 'WanPipeline'",
        " 'wan_lora'",
    ]
