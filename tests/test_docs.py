"""The reference pages are generated from the code and must not drift from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorakit.plugins import set_plugins

DOCS = Path(__file__).parent.parent / "docs"
REGENERATE = "regenerate with: .venv/bin/python -m lorakit.cli.docs_gen"


@pytest.fixture
def installed_plugins():
    set_plugins(None)  # the installed backends, as a user's lorakit sees them
    yield
    set_plugins(None)


def test_configuration_reference_matches_the_schemas(installed_plugins):
    from lorakit.config.reference import reference

    assert (DOCS / "configuration.md").read_text() == reference(), REGENERATE


def test_cli_reference_matches_the_commands(installed_plugins):
    from lorakit.cli.docs_gen import cli_reference

    assert (DOCS / "cli.md").read_text() == cli_reference(), REGENERATE


def test_every_page_is_in_the_nav():
    import yaml

    nav = yaml.safe_load((DOCS.parent / "mkdocs.yml").read_text())["nav"]

    def pages(items):
        for item in items:
            for value in item.values():
                yield from pages(value) if isinstance(value, list) else [value]

    listed = set(pages(nav))
    assert {p.name for p in DOCS.glob("*.md")} == listed
