"""The test plugins' own rules: a missing system dependency skips locally and fails under CI=true."""

from __future__ import annotations

import pytest

from plugins.ci import in_ci, missing_dependency


@pytest.mark.parametrize(
    ("value", "ci"), [("true", True), ("TRUE", True), ("True", True), ("false", False), ("", False), ("1", False)]
)
def test_ci_is_true_in_any_case(monkeypatch: pytest.MonkeyPatch, value: str, ci: bool) -> None:
    """CI=true counts in any case; anything else (unset, false, 1) is a developer's machine."""
    monkeypatch.setenv("CI", value)
    assert in_ci() is ci


def test_missing_dependency_fails_under_ci_and_skips_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under CI a missing binary fails the test with the install hint; elsewhere it is a skip with the hint."""
    monkeypatch.setenv("CI", "True")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y x"):
        missing_dependency("apt-get install -y x")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y x"):
        missing_dependency("apt-get install -y x")
