"""Availability survives restarts: a real Prometheus scrapes a real process that records quarantines, is
stopped and started again mid-window, and records more; the shipped rules equal the true availability."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ark_obs.metrics import MetricsCollector
from ark_obs.slo.collector import ProcessQuarantines
from plugins.multiprocess import SCRAPED_COLLECTOR, LineProcess
from plugins.net import free_port as _free_port
from plugins.prometheus_server import PrometheusFactory, PrometheusServer

ROOT = Path(__file__).resolve().parents[2]
SLO_RULES = ROOT / "deploy/prometheus/rules/ark-slo.rules.yml"
SCRAPE_S = 1.0
TOLERANCE = 0.003
DOWNTIME_PER_QUARANTINE_S = 5.0

# The recording process: ark-obs' collector served over HTTP; each stdin line "agent reason" is one
# Watchdog quarantine, acknowledged with "ok" once recorded.
RECORDER = (
    SCRAPED_COLLECTOR
    + """
for line in sys.stdin:
    agent, reason = line.split()
    collector.inc_counter("watchdog_quarantines_total", labels={"agent": agent, "reason": reason})
    print("ok", flush=True)
"""
)


class Recorder(LineProcess):
    """One run of the recording process on ``port``."""

    def __init__(self, port: int) -> None:
        super().__init__(RECORDER, str(port))

    def quarantine(self, agent: str, reason: str) -> None:
        self.send(f"{agent} {reason}")


@pytest.fixture
def recorders() -> Iterator[list[Recorder]]:
    made: list[Recorder] = []
    yield made
    for recorder in made:
        recorder.stop()


def scraped_total(prom: PrometheusServer) -> float:
    """Quarantines Prometheus has seen, summed over every process' last scraped value."""
    return prom.query_value("sum(last_over_time(ark_watchdog_quarantines_process_total[1h]))") or 0.0


def test_process_series_counts_from_zero_and_ignores_a_persisting_baseline() -> None:
    """The per-process total is 0 before any quarantine, counts every agent and reason, and names its boot."""
    collector = MetricsCollector(ticker=False)
    process = collector.process_quarantines
    assert process is not None
    sample = collector.registry.prometheus.get_sample_value
    labels = {"boot": process.boot}
    assert sample("ark_watchdog_quarantines_process_total", labels) == 0.0
    assert sample("ark_obs_start_time_seconds", labels) == process.started
    collector.inc_counter("watchdog_quarantines_total", labels={"agent": "Kenny", "reason": "stuck"})
    collector.inc_counter("watchdog_quarantines_total", 2, labels={"agent": "Joey", "reason": "free text"})
    assert sample("ark_watchdog_quarantines_process_total", labels) == 3.0
    # counts taken before this process started (multiprocess files of an earlier run) are a baseline
    later = ProcessQuarantines(collector, started=process.started + 1)
    assert later.boot != process.boot
    family = next(f for f in later.collect() if f.name == "ark_watchdog_quarantines_process")
    assert [s.value for s in family.samples if s.name.endswith("_total")] == [0.0]


def test_rules_count_every_quarantine_across_a_restart(
    prometheus_factory: PrometheusFactory, recorders: list[Recorder]
) -> None:
    """Stop and restart the recorder mid-window: ark:availability:ratio_* equal the truth within 0.003.

    The first run quarantines Kenny/stuck once and Joey/crash twice; the restarted run quarantines
    Kenny/stuck again before its first scrape (the label set is born again at its old value 1, which
    watchdog_quarantines_total cannot show) and Aletheia/slow once. 5 quarantines in the window.
    """
    port = _free_port()
    prom = prometheus_factory(
        [f"127.0.0.1:{port}"], rule_files=[SLO_RULES], scrape_interval="1s", evaluation_interval="1s"
    )
    first = Recorder(port)
    recorders.append(first)
    prom.wait_targets_up(samples=2, timeout=30)
    for agent, reason in (("Kenny", "stuck"), ("Joey", "crash"), ("Joey", "crash")):
        first.quarantine(agent, reason)
    prom.wait_until(lambda: scraped_total(prom) == 3, timeout=15, what="first run's quarantines scraped")
    first.stop()

    second = Recorder(port)
    recorders.append(second)
    second.quarantine("Kenny", "stuck")  # right after the restart, before its first scrape
    second.quarantine("Aletheia", "slow")
    recorded = time.time()
    quarantines = 5

    prom.wait_until(lambda: scraped_total(prom) == quarantines, timeout=15, what="second run scraped")
    # one evaluation that started after that scrape
    seen = time.time() + SCRAPE_S

    def evaluated() -> bool:
        groups = prom.rules("record")
        return all(_unix(g["lastEvaluation"]) > seen for g in groups)

    prom.wait_until(evaluated, timeout=15, what="rules evaluated after the scrape")
    for window, seconds in (("5m", 300), ("30m", 1800), ("1h", 3600), ("1d", 86400)):
        truth = 1 - quarantines * DOWNTIME_PER_QUARANTINE_S / seconds
        value = prom.query_value(f"ark:availability:ratio_{window}")
        assert value is not None and abs(value - truth) <= TOLERANCE, (window, value, truth)
        assert prom.query_value(f"ark:watchdog_quarantines:increase{window}") == quarantines, window
    # the label-set form, on the same data, misses the quarantine that reborn Kenny/stuck at 1
    label_set_form = prom.query_value(
        "sum((max_over_time(watchdog_quarantines_total[5m]) unless watchdog_quarantines_total offset 5m)"
        " or increase(watchdog_quarantines_total[5m]))"
    )
    assert label_set_form is not None and label_set_form < quarantines - 0.5
    assert time.time() - recorded < 60  # all of it inside the 5m window


def _unix(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
