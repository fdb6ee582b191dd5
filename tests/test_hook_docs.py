"""Every hook is documented in docs/plugin-hooks.md, and every documented hook exists."""

import re
from pathlib import Path

from lorakit import hookspecs

DOC = Path(__file__).parent.parent / "docs" / "plugin-hooks.md"


def spec_names() -> set[str]:
    return {
        name
        for name, obj in vars(hookspecs).items()
        if callable(obj) and hasattr(obj, "lorakit_spec")
    }


def test_every_hook_is_documented():
    documented = set(re.findall(r"^### `(\w+)\(", DOC.read_text(), re.M))
    missing = spec_names() - documented
    assert not missing, f"hooks without a section in docs/plugin-hooks.md: {sorted(missing)}"


def test_every_documented_hook_exists():
    documented = set(re.findall(r"^### `(\w+)\(", DOC.read_text(), re.M))
    assert documented <= spec_names(), documented - spec_names()


def test_every_hook_has_a_docstring():
    for name in spec_names():
        assert getattr(hookspecs, name).__doc__, name
