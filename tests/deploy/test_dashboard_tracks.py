"""The Grafana dashboard for a fleet: its variables select real series from a Prometheus scraping two tracks.

Two ark-obs services (track canary and track stable, one instance each) are scraped by a real Prometheus
with the shipped rules. Every query of ark-overview.json, with its variables substituted the way Grafana
does (one track, one instance, or All), must return samples of exactly the selected track(s).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ark_obs.metrics import MetricsCollector
from plugins.inprocess import running_service
from plugins.prometheus_server import PrometheusFactory, PrometheusServer, ScrapeTarget

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "deploy/grafana/dashboards/ark-overview.json").read_text())
PIPELINE = ("Kyle", "Joey", "HRM", "Kenny", "Aletheia")
TRACKS = ("canary", "stable")
# Zero is an answer for these once traffic stops (nothing in flight); every other query must show the
# traffic recorded below.
MAY_BE_ZERO = {"ark_traces_in_flight"}


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


TARGETS = [(p["title"], t) for p in panels(DASHBOARD["panels"]) for t in p.get("targets", [])]
VARIABLES = {v["name"]: v for v in DASHBOARD["templating"]["list"]}


@dataclass
class Service:
    track: str
    collector: MetricsCollector
    address: str


@contextlib.contextmanager
def start(track: str) -> Iterator[Service]:
    """An ark-obs service as ``ark-obs serve`` builds it, on a free loopback port (a long heartbeat interval:
    the agents' one beat keeps them up for the whole test)."""
    with running_service(trace_ttl_seconds=0.5, heartbeat_interval_seconds=60, pipeline=PIPELINE) as running:
        yield Service(track, running.collector, running.url.removeprefix("http://"))


def traffic(service: Service, n: int, slow: bool) -> None:
    """n decisions (the canary's slower), HRM evaluations, a denial, a quarantine, traces (some stuck), beats."""
    c = service.collector
    for i in range(n):
        trace_id = uuid.uuid4().hex
        stuck = i % 5 == 0
        for agent in PIPELINE[:3] if stuck else PIPELINE:
            c.record_trace_span(trace_id, agent, duration_ms=1.0)
        c.observe_histogram("ark_pass_latency_ms", (450.0 if slow else 90.0) + i, {"trace_id": trace_id})
        c.observe_histogram("hrm_eval_latency_ms", 40.0 + i)
    c.inc_counter("hrm_denials_total", labels={"rule_id": "GY-001", "agent": "Kenny"})
    c.inc_counter("watchdog_quarantines_total", labels={"agent": "Kenny", "reason": "error_burst"})
    c.set_gauge("redis_stream_depth", 10, {"stream": "ark:signals"})
    for agent in PIPELINE:
        c.heartbeats.beat(agent)


@pytest.fixture(scope="module")
def prom(prometheus_factory: PrometheusFactory) -> Iterator[tuple[PrometheusServer, dict[str, Service]]]:
    """A Prometheus with the shipped rules scraping both services after two phases of traffic."""
    with contextlib.ExitStack() as stack:
        services = {track: stack.enter_context(start(track)) for track in TRACKS}
        server = prometheus_factory([ScrapeTarget(s.address, {"track": s.track}) for s in services.values()])
        try:
            server.wait_targets_up(samples=2)
            # two phases: the labelled series are born, then grow, so rate() and increase() see them grow
            for phase in (1, 2):
                for s in services.values():
                    traffic(s, 10 * phase, slow=s.track == "canary")
                decisions = sum(10 * p for p in range(1, phase + 1)) * len(TRACKS)
                stuck = sum(2 * p for p in range(1, phase + 1)) * len(TRACKS)

                def scraped(d: int = decisions, i: int = stuck) -> bool:
                    return (server.query_value("sum(ark_pass_latency_ms_count)") == d
                            and server.query_value("sum(ark_traces_incomplete_total)") == i)  # fmt: skip

                server.wait_until(scraped, timeout=20, what=f"{decisions} decisions, {stuck} stuck traces scraped")
            seen = time.time() + 1
            server.wait_until(lambda: all(_unix(g["lastEvaluation"]) > seen for g in server.rules()),
                              timeout=20, what="rules evaluated after the last scrape")  # fmt: skip
            yield server, services
        finally:
            server.stop()


def _unix(rfc3339: str) -> float:
    from datetime import datetime

    m = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", rfc3339)
    assert m, rfc3339
    return datetime.fromisoformat(m[1] + m[3].replace("Z", "+00:00")).timestamp() + float(m[2] or 0)


def substitute(expr: str, values: dict[str, str]) -> str:
    """What Grafana sends: each $variable replaced, interval macros as 1m (range queries run as instant)."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "1m", expr)
    for name, value in values.items():
        expr = expr.replace(f"${name}", value)
    assert "$" not in expr, expr
    return expr


def test_dashboard_has_datasource_job_instance_and_track_variables() -> None:
    """Variables: a Prometheus datasource picker defaulting to the provisioned uid, job (default ark-obs),
    instance and track (multi-value, All = .*); every panel and query uses the datasource variable."""
    assert list(VARIABLES) == ["datasource", "job", "instance", "track", "slo"]
    assert VARIABLES["datasource"]["type"] == "datasource" and VARIABLES["datasource"]["query"] == "prometheus"
    assert VARIABLES["datasource"]["current"]["value"] == "ark-prometheus"
    assert VARIABLES["job"]["current"]["value"] == "ark-obs"
    for name in ("instance", "track", "slo"):
        v = VARIABLES[name]
        assert v["multi"] and v["includeAll"] and v["allValue"] == ".*"
        assert f", {name})" in v["definition"]
    for title, target in TARGETS:
        assert target["datasource"]["uid"] == "${datasource}", title
        assert 'track=~"$track"' in target["expr"], title


def test_legends_name_the_track_and_latency_and_burn_rates_split_by_track() -> None:
    """Every legend names the track; latency quantiles aggregate by (le, track); denials are not in reqps;
    quarantines are shown as increases, not the raw counter."""
    for title, target in TARGETS:
        assert "{{track}}" in target["legendFormat"], title
        if "histogram_quantile" in target["expr"]:
            assert "sum by (le, track)" in target["expr"], title
    units = {p["title"]: p.get("fieldConfig", {}).get("defaults", {}).get("unit") for p in panels(DASHBOARD["panels"])}
    assert all(u != "reqps" for u in units.values()), units
    quarantines = [t["expr"] for _, t in TARGETS if "watchdog_quarantines_total" in t["expr"]]
    assert quarantines and all("increase(watchdog_quarantines_total" in e for e in quarantines)


@pytest.mark.slow
def test_every_query_with_variables_substituted_returns_the_selected_tracks(
    prom: tuple[PrometheusServer, dict[str, Service]],
) -> None:
    """Against a Prometheus scraping a canary and a stable ark-obs: each query, for track=canary, track=stable,
    each instance and All, returns finite samples of exactly the selected track(s), not all zero."""
    server, services = prom
    selections: list[tuple[dict[str, str], set[str]]] = [
        ({"datasource": "ark-prometheus", "job": "ark-obs", "instance": ".*", "track": ".*", "slo": ".*"}, set(TRACKS))
    ]
    for s in services.values():
        selections.append(({"job": "ark-obs", "instance": ".*", "track": s.track, "slo": ".*"}, {s.track}))
        # Grafana escapes a multi-value variable as a regex, inside a PromQL string: backslashes doubled
        instance = re.escape(s.address).replace("\\", "\\\\")
        selections.append(({"job": "ark-obs", "instance": instance, "track": ".*", "slo": ".*"}, {s.track}))
    problems = []
    for (title, target), (values, tracks) in itertools.product(TARGETS, selections):
        expr = substitute(target["expr"], values)
        result = server.query(expr)
        got = {r["metric"].get("track") for r in result}
        numbers = [float(r["value"][1]) for r in result]
        per_instance = "instance" in values and values["instance"] != ".*"
        # rules aggregate by track: an instance selection does not narrow them, which is right for a track
        rule = expr.startswith("ark:") or expr.startswith('{__name__=~"ark:')
        expected = set(TRACKS) if per_instance and rule else tracks
        if got != expected:
            problems.append(f"{title}: {expr}: tracks {got}, expected {expected}")
        elif not all(math.isfinite(v) for v in numbers):
            problems.append(f"{title}: {expr}: not finite: {numbers}")
        elif not any(numbers) and not any(m in expr for m in MAY_BE_ZERO):
            problems.append(f"{title}: {expr}: all zero")
    assert problems == []
    # the canary is slower: the split is real, not two copies of one blend
    p95_expr = next(t["expr"] for _, t in TARGETS if t["legendFormat"] == "p95 · {{track}}" and "ark_pass" in t["expr"])
    everything = {"job": "ark-obs", "instance": ".*", "track": ".*"}
    p95 = {r["metric"]["track"]: float(r["value"][1]) for r in server.query(substitute(p95_expr, everything))}
    assert p95["canary"] > 400 > p95["stable"]
