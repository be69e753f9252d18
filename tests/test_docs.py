"""The README is the user's manual: its metric catalogue and settings must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from ark_obs import catalog

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _between(text: str, marker: str) -> str:
    match = re.search(rf"<!-- {marker}:start -->\n(.*?)<!-- {marker}:end -->", text, re.S)
    assert match, f"README has no {marker} section"
    return match.group(1)


def test_readme_catalogue_is_the_code_catalogue() -> None:
    """Every metric in ark_obs.catalog, and nothing else, is in the README table, with type, unit and labels."""
    assert _between(README, "catalog") == catalog.markdown_table()


def test_readme_catalogue_names_every_declared_metric() -> None:
    """Each catalogue name (and alias) appears in the README."""
    for name in catalog.BY_NAME:
        assert f"`{name}`" in README, name


def test_readme_opens_with_the_two_commands() -> None:
    """make run and make test are the first commands a newcomer sees."""
    first_block = README.split("```")[1]
    assert "make run" in first_block and "make test" in first_block
