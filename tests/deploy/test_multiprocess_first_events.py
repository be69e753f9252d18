"""Multiprocess mode under a real Prometheus: first events and restarts of the exporting process.

Agent processes record into ``PROMETHEUS_MULTIPROC_DIR``; an exporter process (the role of ``ark-obs
serve``) serves the aggregated ``/metrics``. Two fresh agents deny on rules never denied before (each
``hrm_denials_total{rule_id}`` is born at 1, which rate() cannot see), and an agent quarantines while the
exporter is restarting. The shipped rules must count every one of them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugins.multiprocess import SCRAPED_COLLECTOR, LineProcess, multiproc_env
from plugins.net import free_port
from plugins.prometheus_server import PrometheusFactory, PrometheusServer

ROOT = Path(__file__).resolve().parents[2]
RULES = [ROOT / "deploy/prometheus/rules/ark-slo.rules.yml", ROOT / "deploy/prometheus/rules/ark-canary.rules.yml"]
DOWNTIME_PER_QUARANTINE_S = 5.0

# The exporter: the multiprocess exposition (every process' files plus scrape-time families) over HTTP.
EXPORTER = (
    SCRAPED_COLLECTOR
    + """
sys.stdin.readline()
"""
)

# An agent process: each stdin line "deny RULE" or "quarantine AGENT REASON" is recorded, then "ok".
AGENT = """
import sys
from ark_obs import metrics
metrics.get_collector()
print("ready", flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "deny":
        metrics.increment_counter("hrm_denials_total", labels={"rule_id": args[0], "agent": "Kenny"})
    else:
        metrics.increment_counter("watchdog_quarantines_total", labels={"agent": args[0], "reason": args[1]})
    print("ok", flush=True)
"""


class Process(LineProcess):
    """A Python process in multiprocess mode over ``path``, driven line by line."""

    def __init__(self, code: str, path: Path, *args: str) -> None:
        super().__init__(code, *args, env=multiproc_env(path))

    def __call__(self, line: str) -> None:
        self.send(line)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    made: list[Process] = []
    yield made
    for process in made:
        process.stop()


def evaluated_after(prom: PrometheusServer, moment: float) -> None:
    """Until every recording group has been evaluated after ``moment`` (unix time)."""
    from datetime import datetime

    def done() -> bool:
        groups = prom.rules("record")
        return bool(groups) and all(
            datetime.fromisoformat(g["lastEvaluation"].replace("Z", "+00:00")).timestamp() > moment for g in groups
        )

    prom.wait_until(done, timeout=15, what=f"rules evaluated after {moment}")


def test_first_denials_and_a_quarantine_during_an_exporter_restart_are_counted(
    prometheus_factory: PrometheusFactory, processes: list[Process], tmp_path: Path
) -> None:
    """Two fresh agent processes deny 3 times each on 3 new rules: ark:hrm_denials:rate1m counts all 6
    (increase(hrm_denials_total) reads 0). Then one agent quarantines before the exporter's restart, one
    while it is down, one after: ark:watchdog_quarantines:increase* count 3 and availability is exact."""
    port = free_port()
    prom = prometheus_factory([f"127.0.0.1:{port}"], rule_files=RULES)
    exporter = Process(EXPORTER, tmp_path, str(port))
    processes.append(exporter)
    kenny, joey = Process(AGENT, tmp_path), Process(AGENT, tmp_path)
    processes += [kenny, joey]
    boots = (
        "count(ark_hrm_denials_process_total) >= 3"
        " and count(count_over_time(ark_hrm_denials_process_total[1m]) >= 2) >= 3"
    )
    prom.wait_until(lambda: prom.query(boots), timeout=30, what="every process' denial total scraped at 0 twice")

    for agent in (kenny, joey):
        for rule in ("max_leverage", "wash_trade", "restricted_symbol"):
            agent(f"deny {rule}")
    prom.wait_until(
        lambda: prom.query_value("sum(ark_hrm_denials_process_total)") == 6, timeout=15, what="denials scraped"
    )
    evaluated_after(prom, time.time())
    assert prom.query_value("sum(hrm_denials_total)") == 6
    # born at 1: invisible to rate() (no result at all until a second sample)
    assert prom.query_value("sum(increase(hrm_denials_total[1m])) or vector(0)") == 0
    # every denial counted: rate() extrapolates a young series past its samples (at most about one scrape
    # interval on a span of a few), never below the 6 they show
    per_minute = prom.query_value("ark:hrm_denials:rate1m * 60")
    assert per_minute is not None and 5.99 <= per_minute <= 13, per_minute

    kenny("quarantine Kenny stuck")
    prom.wait_until(
        lambda: prom.query_value("sum(ark_watchdog_quarantines_process_total)") == 1, timeout=15, what="scraped"
    )
    exporter.stop()
    joey("quarantine Joey crash")  # inside the restart gap: no exporter is scraped
    restarted = Process(EXPORTER, tmp_path, str(port))
    processes.append(restarted)
    kenny("quarantine Kenny stuck")
    quarantines = 3
    prom.wait_until(
        lambda: prom.query_value("sum(ark_watchdog_quarantines_process_total)") == quarantines,
        timeout=15,
        what="every quarantine scraped after the restart",
    )
    evaluated_after(prom, time.time())
    for window, seconds in (("5m", 300), ("30m", 1800), ("1h", 3600), ("1d", 86400)):
        assert prom.query_value(f"ark:watchdog_quarantines:increase{window}") == quarantines, window
        truth = 1 - quarantines * DOWNTIME_PER_QUARANTINE_S / seconds
        value = prom.query_value(f"ark:availability:ratio_{window}")
        assert value is not None and abs(value - truth) < 1e-9, (window, value, truth)
