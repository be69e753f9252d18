"""Shared fixtures: real servers are started once per session by the plugins below."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = [
    "plugins.redis_server",
    "plugins.redis_cluster",
    "plugins.prometheus_server",
    "plugins.serve",
    "plugins.stores",
    "plugins.alertmanager",
]
