"""The README is the user's manual: its metric catalogue and settings must match the code."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

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


def test_readme_configuration_names_every_setting() -> None:
    """Every ARK_OBS_* setting (service and canary) has a row in the README (its default: the test below)."""
    from ark_obs.canary import CanaryConfig
    from ark_obs.settings import Settings

    for prefix, cls in (("ARK_OBS_", Settings), ("ARK_OBS_CANARY_", CanaryConfig)):
        for name in cls.model_fields:
            row = next((line for line in README.splitlines() if line.startswith(f"| `{prefix}{name.upper()}` |")), None)
            assert row is not None, f"{prefix}{name.upper()} is not in the README's configuration tables"


def test_env_example_and_readme_agree() -> None:
    """.env.example and the README document the same service settings."""
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"\| `(ARK_OBS_[A-Z_]+)` \|", _between(README, "settings")))
    assert documented and all(name in example for name in documented)


def _readme_default(value: Any) -> str:
    """How the README's tables write a default value."""
    if value is None:
        return "(unset)"
    if isinstance(value, tuple):
        return ",".join(value) if value else "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)


def test_readme_configuration_defaults_are_the_code_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each row of the README's settings tables (service and canary) shows the default the code uses."""
    from ark_obs.canary import CanaryConfig
    from ark_obs.settings import Settings

    for key in list(os.environ):
        if key.startswith("ARK_OBS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no .env
    rows = dict(re.findall(r"^\| `(ARK_OBS_[A-Z_]+)` \| (.+?) \|", README, re.M))
    checked = 0
    for prefix, instance in (("ARK_OBS_", Settings()), ("ARK_OBS_CANARY_", CanaryConfig())):
        for name in type(instance).model_fields:
            variable = f"{prefix}{name.upper()}"
            shown = rows[variable].strip()
            expected = _readme_default(getattr(instance, name))
            assert shown in (f"`{expected}`", expected), f"{variable}: README says {shown}, the code {expected!r}"
            checked += 1
    assert checked == len(Settings.model_fields) + len(CanaryConfig.model_fields)
