"""One rule for a missing system dependency: skip on a developer's machine, fail under ``CI=true``.

A skipped real-server test in CI would hide a missing package, so the CI check is made in one place
(case-insensitive, as CI systems spell it ``true`` or ``True``).
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True when the ``CI`` environment variable is ``true`` (any case)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def missing_dependency(message: str) -> NoReturn:
    """Fail the test under CI=true, otherwise skip it; ``message`` says how to install what is missing."""
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)
