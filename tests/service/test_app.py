"""The HTTP app in-process (httpx over ASGI): every endpoint, negotiation, auth, limits, bad input."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from ark_obs import catalog
from ark_obs.context import bind_trace_id
from ark_obs.metrics import MetricsCollector
from ark_obs.service import Service, create_app
from ark_obs.settings import Settings
from ark_obs.traces import TraceMonitor
from ark_obs.traces.heartbeats import HeartbeatMonitor
from ark_obs.traces.redis_store import RedisStore
from plugins.clock import FakeClock
from plugins.net import free_port

PIPELINE = ("Kyle", "Joey", "HRM", "Kenny", "Aletheia")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UUID_TRACE = "0af76519-16cd-43dd-8448-eb211c80319c"
TOKEN = "correct-horse-battery-staple"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def settings(**kw: Any) -> Settings:
    """Settings from arguments only: the developer's environment and .env stay out of tests."""
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client on ``app`` with its lifespan running (startup hooks, then shutdown flush)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ark-obs.test") as client:
            yield client


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """A client on an app built from default settings (memory store, no token)."""
    async with serve(create_app(settings())) as c:
        yield c


def manual_collector(clock: FakeClock, ttl: float = 30.0, max_agents: int = 1000) -> MetricsCollector:
    """A collector on ``clock`` whose trace sweep the test drives (no background threads)."""
    collector = MetricsCollector(clock=clock, ticker=False)
    collector.traces = TraceMonitor(collector, "memory", pipeline=PIPELINE, ttl_seconds=ttl, background=False)
    collector.heartbeats = HeartbeatMonitor(collector, background=False, max_agents=max_agents)
    return collector


def families(text: str) -> dict[str, Any]:
    """Parse text format 0.0.4; a family emitted twice fails the test."""
    out: dict[str, Any] = {}
    for fam in parse_text(text):
        assert fam.name not in out, f"family {fam.name} emitted twice"
        out[fam.name] = fam
    return out


# --- health ----------------------------------------------------------------------------------------
async def test_healthz(client: httpx.AsyncClient) -> None:
    """/healthz answers 200 with status ok and the version."""
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["version"]


async def test_readyz_ready(client: httpx.AsyncClient) -> None:
    """/readyz is 200 with both checks passing when the registry collects and the store answers."""
    r = await client.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready" and body["failing"] == []
    assert {c["name"] for c in body["checks"]} == {"registry", "trace_store"}


async def test_readyz_names_a_broken_registry() -> None:
    """A collector that raises at scrape time makes /readyz 503 with failing == ["registry"]."""

    class Broken:
        def describe(self) -> list[Any]:
            return []

        def collect(self) -> Any:
            raise RuntimeError("boom")

    collector = manual_collector(FakeClock())
    collector.add_collector(Broken())
    async with serve(create_app(settings(), collector)) as c:
        r = await c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["failing"] == ["registry"]
    assert "boom" in r.json()["checks"][0]["detail"]


async def test_store_down_is_503_not_200() -> None:
    """With Redis unreachable: /readyz 503 naming trace_store, writes 503 (never a false 2xx), reads 503."""
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = create_app(settings(trace_store=url, store_timeout_seconds=0.1))
    async with serve(app) as c:
        deadline = time.monotonic() + 5
        while (r := await c.get("/readyz")).status_code != 503:
            assert time.monotonic() < deadline, "store never reported unhealthy"
            await asyncio.sleep(0.05)
        assert r.json()["failing"] == ["trace_store"]
        assert "redis" in r.json()["checks"][1]["detail"]
        r = await c.post(f"/traces/{TRACE}/spans", json={"agent": "Kyle"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        r = await c.post("/spans", json={"spans": [{"trace_id": TRACE, "agent": "Kyle"}]})
        assert r.status_code == 503
        assert (await c.get(f"/traces/{TRACE}")).status_code == 503
        assert (await c.post("/heartbeats/Kyle")).status_code == 503
        refused = families((await c.get("/metrics")).text)["ark_obs_requests_refused"].samples
    # the four 503s above and the one /readyz answered when the poll ended
    assert [s.value for s in refused if s.labels["reason"] == "unavailable" and s.name.endswith("_total")] == [5.0]


# --- /metrics --------------------------------------------------------------------------------------
async def test_metrics_text_default(client: httpx.AsyncClient) -> None:
    """Default /metrics is text 0.0.4 that prometheus_client parses; every catalogue family, SLO and
    trace families included, none twice."""
    r = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "content-encoding" not in r.headers
    fams = families(r.text)
    for name in ("ark_pass_latency_ms", "hrm_denials", "ark_slo_objective", "ark_traces_in_flight"):
        assert name in fams, name
    assert {s.labels["slo"] for s in fams["ark_slo_objective"].samples} == {
        "availability",
        "decision_latency_p95",
        "hrm_eval_latency_p95",
        "ethics_drift",
    }


async def test_metrics_openmetrics_with_exemplar() -> None:
    """Accept: OpenMetrics gives OpenMetrics 1.0.0 that the OM parser reads, with the trace id as exemplar."""
    collector = manual_collector(FakeClock())
    with bind_trace_id(TRACE):
        collector.observe_histogram("ark_pass_latency_ms", 285.3)
    async with serve(create_app(settings(), collector)) as c:
        r = await c.get("/metrics", headers={"Accept": OPENMETRICS})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    assert r.text.endswith("# EOF\n")
    fams = {f.name: f for f in parse_openmetrics(r.text)}
    bucket = next(
        s for s in fams["ark_pass_latency_ms"].samples if s.name.endswith("_bucket") and s.labels["le"] == "300.0"
    )
    assert bucket.exemplar is not None
    assert bucket.exemplar.labels == {"trace_id": TRACE}
    assert bucket.exemplar.value == 285.3


async def test_metrics_garbage_accept_is_not_an_error(client: httpx.AsyncClient) -> None:
    """A malformed Accept header still gets a 200 in text format, never a 500."""
    r = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=foo"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [("gzip", True), ("br, gzip;q=0.5", True), ("*", True), ("gzip;q=0", False), ("identity", False), ("", False)],
)
async def test_metrics_gzip(client: httpx.AsyncClient, accept_encoding: str, gzipped: bool) -> None:
    """gzip when Accept-Encoding allows it (q=0 refuses); the compressed body is the same exposition."""
    r = await client.get("/metrics", headers={"Accept-Encoding": accept_encoding})
    assert r.status_code == 200
    assert (r.headers.get("content-encoding") == "gzip") is gzipped
    assert "Accept-Encoding" in r.headers["vary"]
    # httpx decodes gzip itself; check the raw bytes too
    raw = r.content if not gzipped else gzip.decompress(await _raw_body(client, accept_encoding))
    assert b"# TYPE ark_pass_latency_ms histogram" in raw


async def _raw_body(client: httpx.AsyncClient, accept_encoding: str) -> bytes:
    async with client.stream("GET", "/metrics", headers={"Accept-Encoding": accept_encoding}) as r:
        return b"".join([chunk async for chunk in r.aiter_raw()])


async def test_metrics_name_filter(client: httpx.AsyncClient) -> None:
    """name[] keeps only the named families (recorded and scrape-time alike)."""
    r = await client.get(
        "/metrics",
        params=[("name[]", "ark_pass_latency_ms"), ("name[]", "ark_slo_met"), ("name[]", "ark_traces_in_flight")],
    )
    assert r.status_code == 200
    names = {n for n in families(r.text) if not n.endswith("_created")}  # text 0.0.4 lists _created apart
    assert names == {"ark_pass_latency_ms", "ark_slo_met", "ark_traces_in_flight"}


async def test_metrics_name_filter_rejects_non_metric_names(client: httpx.AsyncClient) -> None:
    """A name[] that cannot be a metric name is a 422 naming the parameter."""
    r = await client.get("/metrics", params={"name[]": "not a metric{}"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][:2] == ["query", "name[]"]


async def test_metrics_exposition_does_not_block_the_loop() -> None:
    """A slow exposition runs in a worker thread: /healthz answers while a scrape is stuck collecting."""
    collecting, release = threading.Event(), threading.Event()

    class Slow:
        def describe(self) -> list[Any]:
            return []

        def collect(self) -> Any:
            collecting.set()
            release.wait(10)  # held until the test has its /healthz answer
            yield GaugeMetricFamily("slow_gauge", "A collector that takes its time.", value=1)

    collector = manual_collector(FakeClock())
    collector.add_collector(Slow())
    async with serve(create_app(settings(), collector)) as c:
        scrape = asyncio.create_task(c.get("/metrics"))
        assert await asyncio.to_thread(collecting.wait, 10), "the scrape never started collecting"
        try:
            assert (await c.get("/healthz")).status_code == 200
            assert not scrape.done() and not release.is_set()  # answered while the scrape was still held
        finally:
            release.set()
        assert "slow_gauge 1.0" in (await scrape).text


async def test_metrics_json(client: httpx.AsyncClient) -> None:
    """/metrics/json has every family /metrics has, with samples, plus windowed stats of every histogram."""
    await client.post("/spans", json={"spans": [{"trace_id": TRACE, "agent": a, "duration_ms": 10} for a in PIPELINE]})
    body = (await client.get("/metrics/json")).json()
    names = {f["name"] for f in body["families"]}
    text_names = {n for n in families((await client.get("/metrics")).text) if not n.endswith("_created")}
    assert names == text_names
    histograms = {s.name for s in catalog.CATALOG if s.kind is catalog.Kind.HISTOGRAM}
    assert set(body["histograms"]) >= histograms
    stats = body["histograms"]["ark_trace_latency_ms"]
    assert stats["count"] == 1 and stats["window_seconds"] == 3600.0
    # one trace, its five 10 ms spans ending now: every statistic is that one latency
    assert 10.0 <= stats["sum"] < 10_000.0
    assert stats["p50"] == stats["p95"] == stats["p99"] == stats["min"] == stats["max"] == stats["avg"] == stats["sum"]
    assert body["histograms"]["hrm_eval_latency_ms"] == {
        "count": 0,
        "sum": 0.0,
        "avg": None,
        "p50": None,
        "p95": None,
        "p99": None,
        "min": None,
        "max": None,
        "window_seconds": 3600.0,
        "lower_bounds": [],
    }
    complete = next(f for f in body["families"] if f["name"] == "ark_traces_complete")
    assert complete["type"] == "counter"
    assert any(s["name"] == "ark_traces_complete_total" and s["value"] == 1.0 for s in complete["samples"])


async def test_metrics_json_window(client: httpx.AsyncClient) -> None:
    """window_seconds sets the stats window; longer than the retention is a 422 naming it."""
    r = await client.get("/metrics/json", params={"window_seconds": 300})
    assert r.json()["histograms"]["ark_pass_latency_ms"]["window_seconds"] == 300.0
    r = await client.get("/metrics/json", params={"window_seconds": 7200})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "window_seconds"]


async def test_metrics_json_non_finite_values_are_strings() -> None:
    """A NaN or infinite sample is the JSON string NaN / +Inf, not invalid JSON."""

    class Odd:
        def describe(self) -> list[Any]:
            return []

        def collect(self) -> Any:
            g = GaugeMetricFamily("odd", "Odd values.", labels=["v"])
            g.add_metric(["nan"], float("nan"))
            g.add_metric(["inf"], float("inf"))
            yield g

    collector = manual_collector(FakeClock())
    collector.add_collector(Odd())
    async with serve(create_app(settings(), collector)) as c:
        r = await c.get("/metrics/json")
    json.loads(r.text)  # strict JSON
    odd = next(f for f in r.json()["families"] if f["name"] == "odd")
    assert [s["value"] for s in odd["samples"]] == ["NaN", "+Inf"]


# --- /slos -----------------------------------------------------------------------------------------
async def test_slos_shape(client: httpx.AsyncClient) -> None:
    """/slos has the seed's keys (slos, total, met, violated, violations) for the four default SLOs."""
    body = (await client.get("/slos")).json()
    assert {"slos", "total", "met", "violated", "violations"} <= set(body)
    assert body["total"] == 4
    assert {s["name"] for s in body["slos"]} == {
        "availability",
        "decision_latency_p95",
        "hrm_eval_latency_p95",
        "ethics_drift",
    }


async def test_slos_from_file(tmp_path: Any) -> None:
    """ARK_OBS_SLO_FILE replaces the default SLOs."""
    f = tmp_path / "slos.yaml"
    f.write_text(
        "slos:\n  - id: fast_hrm\n    kind: latency\n    metric: hrm_eval_latency_ms\n"
        "    threshold: 100\n    window: 1m\n"
    )
    async with serve(create_app(settings(slo_file=f))) as c:
        body = (await c.get("/slos")).json()
    assert [s["name"] for s in body["slos"]] == ["fast_hrm"]


# --- traces ----------------------------------------------------------------------------------------
async def test_trace_report_complete(client: httpx.AsyncClient) -> None:
    """Spans posted one by one make a complete trace whose report lists the agents in order."""
    t0 = time.time() - 10  # span times must be recent: within the trace TTL
    for i, agent in enumerate(PIPELINE):
        r = await client.post(f"/traces/{TRACE}/spans", json={"agent": agent, "at": t0 + i, "duration_ms": 100})
        assert r.status_code == 200 and r.json() == {"accepted": 1}
    r = await client.get(f"/traces/{TRACE}")
    assert r.status_code == 200
    body = r.json()
    assert body["complete"] is True and body["known"] is True and body["status"] == "complete"
    assert body["missing_agents"] == [] and body["agents_seen"] == list(PIPELINE)
    assert body["latency_ms"] == pytest.approx(4100.0)
    assert [s["duration_ms"] for s in body["spans"]] == pytest.approx([100.0] * 5)


async def test_trace_report_expected_agents(client: httpx.AsyncClient) -> None:
    """?expected= checks against those agents instead of the pipeline."""
    await client.post("/spans", json={"spans": [{"trace_id": UUID_TRACE, "agent": a} for a in ("Kyle", "Joey")]})
    r = await client.get(f"/traces/{UUID_TRACE}", params={"expected": "Kyle,Joey"})
    assert r.json()["complete"] is True and r.json()["expected_agents"] == ["Kyle", "Joey"]
    r = await client.get(f"/traces/{UUID_TRACE}", params={"expected": "Kyle, Joey ,HRM"})
    assert r.json()["complete"] is False and r.json()["missing_agents"] == ["HRM"]
    r = await client.get(f"/traces/{UUID_TRACE}")
    assert r.json()["missing_agents"] == ["HRM", "Kenny", "Aletheia"] and r.json()["status"] == "in_flight"


async def test_trace_unknown_is_404(client: httpx.AsyncClient) -> None:
    """A well-formed id the store does not hold is a 404."""
    r = await client.get(f"/traces/{'a' * 32}")
    assert r.status_code == 404 and "unknown trace" in r.json()["detail"]


async def test_every_id_form_accepted_for_writing_is_accepted_for_reading() -> None:
    """Spans recorded under an upper-case UUID (the library and OTLP take it) and posted under an upper-case
    W3C id: GET /traces/{id} answers 200 for the trace under each form, either case, as one canonical id."""
    collector = manual_collector(FakeClock())
    collector.record_trace_span(UUID_TRACE.upper(), "Kyle")
    async with serve(create_app(settings(), collector)) as c:
        hex_upper = UUID_TRACE.replace("-", "").upper()
        assert (await c.post(f"/traces/{hex_upper}/spans", json={"agent": "Joey"})).status_code == 200
        for form in (UUID_TRACE.upper(), UUID_TRACE, hex_upper, hex_upper.lower()):
            r = await c.get(f"/traces/{form}")
            assert r.status_code == 200, (form, r.text)
            body = r.json()
            assert body["trace_id"] == UUID_TRACE.replace("-", "")
            assert body["agents_seen"] == ["Kyle", "Joey"], form


@pytest.mark.parametrize(
    "bad",
    [
        "abc-123",
        "0" * 32,
        "00000000-0000-0000-0000-000000000000",
        TRACE + "0",
        UUID_TRACE.upper() + "0",
        "%00" * 12,
    ],
)
async def test_trace_malformed_id_is_422(client: httpx.AsyncClient, bad: str) -> None:
    """A trace id that is not a UUID or a non-zero W3C trace-id is a 422 naming trace_id."""
    r = await client.get(f"/traces/{bad}")
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["path", "trace_id"]
    r = await client.post(f"/traces/{bad}/spans", json={"agent": "Kyle"})
    assert r.status_code == 422


@pytest.mark.parametrize("expected", ["Kyle,bad name", "Kyle,9", ",,,", ",".join(f"A{i}" for i in range(40))])
async def test_trace_bad_expected_is_422(client: httpx.AsyncClient, expected: str) -> None:
    """Bad agent names in ?expected= are a 422 naming the parameter."""
    r = await client.get(f"/traces/{TRACE}", params={"expected": expected})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "expected"]


async def test_recent_incomplete_traces() -> None:
    """GET /traces?status=incomplete lists traces that expired incomplete, newest first, with what is missing."""
    clock = FakeClock()
    collector = manual_collector(clock, ttl=30)
    traces = ["1" * 32, "2" * 32, "3" * 32]
    async with serve(create_app(settings(), collector)) as c:
        for i, trace_id in enumerate(traces):
            await c.post("/spans", json={"spans": [{"trace_id": trace_id, "agent": a} for a in PIPELINE[: i + 1]]})
            clock.now += 1
        clock.now += 60
        collector.traces.sweep()
        r = await c.get("/traces", params={"status": "incomplete", "limit": 2})
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "incomplete" and body["count"] == 2
        assert [t["trace_id"] for t in body["traces"]] == [traces[2], traces[1]]
        assert body["traces"][0]["missing_agents"] == ["Kenny", "Aletheia"]
        fams = families((await c.get("/metrics", params={"name[]": "ark_traces_incomplete_total"})).text)
        by_agent = {
            s.labels["missing_agent"]: s.value
            for s in fams["ark_traces_incomplete"].samples
            if s.name.endswith("_total")
        }
        # every pipeline agent's series exists from the start (0 until a trace stops before it)
        assert by_agent == {"Kyle": 0.0, "Joey": 1.0, "HRM": 1.0, "Kenny": 1.0, "Aletheia": 0.0}


@pytest.mark.parametrize("query", [{"status": "complete"}, {"limit": 0}, {"limit": 100_000}, {"limit": "x"}])
async def test_trace_list_bad_query_is_422(client: httpx.AsyncClient, query: dict[str, Any]) -> None:
    """Only status=incomplete exists; limit is 1..1000."""
    assert (await client.get("/traces", params=query)).status_code == 422


# --- ingest --------------------------------------------------------------------------------------
async def test_batch_of_many_traces(client: httpx.AsyncClient) -> None:
    """One batch can carry spans of many traces; a 200 means every one of them is in the store."""
    ids = [f"{i:032x}" for i in range(1, 51)]
    spans = [{"trace_id": t, "agent": a, "duration_ms": 1.5} for t in ids for a in PIPELINE]
    r = await client.post("/spans", json={"spans": spans})
    assert r.status_code == 200 and r.json() == {"accepted": 250}
    for t in ids[::10]:
        assert (await client.get(f"/traces/{t}")).json()["complete"] is True


async def test_traceparent_in_place_of_trace_id(client: httpx.AsyncClient) -> None:
    """POST /traceparent/spans records a span of the trace the W3C traceparent header names."""
    for agent in ("Kyle", "Joey"):
        header = f"00-{TRACE}-00f067aa0ba902b7-01"
        r = await client.post("/traceparent/spans", json={"agent": agent}, headers={"traceparent": header})
        assert r.status_code == 200 and r.json() == {"accepted": 1}
    assert (await client.get(f"/traces/{TRACE}")).json()["agents_seen"] == ["Kyle", "Joey"]
    # a later version with extra fields is read for its first four (W3C forward compatibility)
    r = await client.post(
        "/traceparent/spans", json={"agent": "HRM"}, headers={"traceparent": f"01-{TRACE}-00f067aa0ba902b7-01-xyz"}
    )
    assert r.status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        None,
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "garbage",
    ],
)
async def test_missing_or_bad_traceparent_is_422(client: httpx.AsyncClient, header: str | None) -> None:
    """A missing or invalid traceparent is a 422 naming the header, and nothing is stored."""
    headers = {} if header is None else {"traceparent": header}
    r = await client.post("/traceparent/spans", json={"agent": "Kyle"}, headers=headers)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["header", "traceparent"]
    assert (await client.get(f"/traces/{TRACE}")).status_code == 404


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"spans": [{"trace_id": TRACE, "agent": "bad name"}]}, ["body", "spans", 0, "agent"]),
        ({"spans": [{"trace_id": TRACE, "agent": "K" * 65}]}, ["body", "spans", 0, "agent"]),
        ({"spans": [{"trace_id": TRACE, "agent": "Kyle\n"}]}, ["body", "spans", 0, "agent"]),
        ({"spans": [{"trace_id": TRACE, "agent": "Kyle", "duration_ms": -1}]}, ["body", "spans", 0, "duration_ms"]),
        ({"spans": [{"trace_id": TRACE, "agent": "Kyle", "at": -5}]}, ["body", "spans", 0, "at"]),
        ({"spans": [{"trace_id": TRACE, "agent": "Kyle", "colour": "red"}]}, ["body", "spans", 0, "colour"]),
        ({"spans": [{"trace_id": "0" * 32, "agent": "Kyle"}]}, ["body", "spans", 0, "trace_id"]),
        ({"spans": [{"trace_id": "xyz", "agent": "Kyle"}]}, ["body", "spans", 0, "trace_id"]),
        ({"spans": [{"agent": "Kyle"}]}, ["body", "spans", 0, "trace_id"]),
        ({"spans": [{"trace_id": TRACE, "agent": "Kyle", "ok": 0}]}, ["body", "spans", 0, "ok"]),
        ({"spans": [{"trace_id": TRACE, "agent": "Kyle", "at": "1.5"}]}, ["body", "spans", 0, "at"]),
        ({"spans": "Kyle"}, ["body", "spans"]),
        ({}, ["body", "spans"]),
    ],
)
async def test_bad_spans_are_422_naming_the_field(client: httpx.AsyncClient, body: Any, loc: list[Any]) -> None:
    """Each invalid span field is a 422 whose loc names it; the input is not echoed back."""
    r = await client.post("/spans", json=body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail[0]["loc"] == loc
    assert all("input" not in d for d in detail)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_non_finite_numbers_are_422(client: httpx.AsyncClient, literal: str) -> None:
    """NaN and infinities (which Python's json accepts) are rejected, not stored."""
    raw = f'{{"spans": [{{"trace_id": "{TRACE}", "agent": "Kyle", "duration_ms": {literal}}}]}}'
    r = await client.post("/spans", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b'{"spans": []}', "text/plain"),
        (b"", "application/json"),
        (b"[]", "application/json"),
        (b'{"spans": [' + b"[" * 5000 + b"]" * 5000 + b"]}", "application/json"),
    ],
)
async def test_unreadable_bodies_are_4xx(client: httpx.AsyncClient, content: bytes, content_type: str) -> None:
    """Malformed JSON, bad bytes, a wrong content type or deep nesting are client errors, never a 500."""
    r = await client.post("/spans", content=content, headers={"Content-Type": content_type})
    assert 400 <= r.status_code < 500, r.text


async def test_batch_over_limit_is_413() -> None:
    """More spans than ARK_OBS_MAX_BATCH_SPANS is a 413 and stores nothing; at the limit is fine."""
    async with serve(create_app(settings(max_batch_spans=10))) as c:
        spans = [{"trace_id": f"{i + 1:032x}", "agent": "Kyle"} for i in range(11)]
        r = await c.post("/spans", json={"spans": spans})
        assert r.status_code == 413 and "limit is 10" in r.json()["detail"]
        assert (await c.get(f"/traces/{1:032x}")).status_code == 404
        assert (await c.post("/spans", json={"spans": spans[:10]})).status_code == 200


@pytest.mark.parametrize("padding", [0, 4_000], ids=["one-call-path", "sliced-path"])
async def test_batch_answers_do_not_depend_on_the_body_size(padding: int) -> None:
    """Bodies under and over FAST_VALIDATION_BYTES (validated in one call, or parsed and validated in
    slices) get the same answers: a valid batch is stored; 25 invalid spans after ``padding`` valid ones
    are a 422 listing 20 errors at their positions plus the total; over the batch limit is 413, valid or not."""
    from ark_obs.service.validation import FAST_VALIDATION_BYTES

    valid = [{"trace_id": f"{i + 1:032x}", "agent": "Kyle", "duration_ms": 1.5} for i in range(padding)]
    invalid = [{"trace_id": "x", "agent": "Kyle"}] * 25
    body = json.dumps({"spans": valid + invalid}).encode()
    assert (len(body) > FAST_VALIDATION_BYTES) == (padding > 0)
    async with serve(create_app(settings(max_batch_spans=padding + 25))) as c:
        r = await c.post("/spans", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422
        assert r.json()["total"] == 25 and len(r.json()["detail"]) == 20
        assert r.json()["detail"][0]["loc"] == ["body", "spans", padding, "trace_id"]
        stored = valid + [{"trace_id": TRACE, "agent": "Kyle"}] * 25
        r = await c.post("/spans", json={"spans": stored})
        assert r.status_code == 200 and r.json() == {"accepted": padding + 25}
        assert (await c.get(f"/traces/{TRACE}")).status_code == 200
        for spans in (stored + stored[:1], valid + invalid + invalid[:1]):
            r = await c.post("/spans", json={"spans": spans})
            assert r.status_code == 413 and f"limit is {padding + 25}" in r.json()["detail"]


async def test_body_over_limit_is_413() -> None:
    """A body over ARK_OBS_MAX_BODY_BYTES is a 413, whether Content-Length says so or the stream shows it."""
    async with serve(create_app(settings(max_body_bytes=4096))) as c:
        spans = [{"trace_id": f"{i + 1:032x}", "agent": "Kyle"} for i in range(100)]
        body = json.dumps({"spans": spans}).encode()
        assert len(body) > 4096
        r = await c.post("/spans", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "4096-byte limit" in r.json()["detail"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            for i in range(0, len(body), 1000):
                yield body[i : i + 1000]

        r = await c.post("/spans", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "4096-byte limit" in r.json()["detail"]
        assert (await c.get(f"/traces/{1:032x}")).status_code == 404


async def test_heartbeat(client: httpx.AsyncClient) -> None:
    """POST /heartbeats/{agent} records a beat: ark_agent_up{agent} is 1 at the next scrape."""
    r = await client.post("/heartbeats/Kenny")
    assert r.status_code == 200 and r.json()["agent"] == "Kenny"
    fams = families((await client.get("/metrics", params={"name[]": "ark_agent_up"})).text)
    assert [(s.labels, s.value) for s in fams["ark_agent_up"].samples] == [({"agent": "Kenny"}, 1.0)]


@pytest.mark.parametrize("agent", ["bad%20name", "9lives", "K" * 65, "a%7Bb%7D"])
async def test_heartbeat_bad_agent_is_422(client: httpx.AsyncClient, agent: str) -> None:
    """An agent name outside the charset or too long is a 422 naming the agent."""
    r = await client.post(f"/heartbeats/{agent}")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "agent"]


# --- auth ------------------------------------------------------------------------------------------
WRITES: list[tuple[str, dict[str, Any]]] = [
    (f"/traces/{TRACE}/spans", {"agent": "Kyle"}),
    ("/traceparent/spans", {"agent": "Kyle"}),
    ("/spans", {"spans": [{"trace_id": TRACE, "agent": "Kyle"}]}),
    ("/heartbeats/Kyle", {}),
]


@pytest.mark.parametrize(("path", "body"), WRITES)
async def test_writes_need_the_token(path: str, body: dict[str, Any]) -> None:
    """With a token set, writes without it or with a wrong one are 401 (WWW-Authenticate: Bearer)."""
    async with serve(create_app(settings(ingest_token=TOKEN))) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            r = await c.post(path, json=body, headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"] == "Bearer"
        traceparent = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
        r = await c.post(path, json=body, headers={"Authorization": f"Bearer {TOKEN}", **traceparent})
        assert r.status_code == 200


async def test_reads_stay_open_with_a_token() -> None:
    """The token guards writes only: scrapes and queries need no credentials."""
    async with serve(create_app(settings(ingest_token=TOKEN))) as c:
        for path in ("/metrics", "/metrics/json", "/slos", "/healthz", "/readyz", "/traces"):
            assert (await c.get(path)).status_code == 200, path


async def test_schema_declares_security_only_with_a_token() -> None:
    """The OpenAPI schema declares the bearer scheme (and 401) on writes only when a token is set."""
    open_schema = create_app(settings()).openapi()
    assert "securitySchemes" not in open_schema.get("components", {})
    assert "401" not in open_schema["paths"]["/spans"]["post"]["responses"]
    guarded = create_app(settings(ingest_token=TOKEN)).openapi()
    assert guarded["components"]["securitySchemes"]["ingestToken"]["scheme"] == "bearer"
    writes = ("/spans", "/heartbeats/{agent}", "/traces/{trace_id}/spans", "/traceparent/spans")
    for path, method in ((w, "post") for w in writes):
        op = guarded["paths"][path][method]
        assert op["security"] == [{"ingestToken": []}] and "401" in op["responses"]
    assert "security" not in guarded["paths"]["/metrics"]["get"]


def test_every_route_has_a_response_model() -> None:
    """Every JSON endpoint documents its 200 body with a schema; /metrics documents both formats, / and
    /runbook are HTML, /runbook.md is markdown."""
    schema = create_app(settings()).openapi()
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            content = op["responses"]["200"]["content"]
            if path in ("/", "/runbook"):
                assert set(content) == {"text/html"}  # the status page, the runbook
            elif path == "/runbook.md":
                assert "text/markdown" in content
            elif path == "/metrics":
                assert set(content) == {
                    "text/plain; version=0.0.4; charset=utf-8",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                }
            else:
                assert "$ref" in content["application/json"]["schema"], (method, path)


# --- lifecycle -------------------------------------------------------------------------------------
async def test_background_hooks_start_and_are_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    """A background hook runs once the app is up, sees the service, and is cancelled at shutdown;
    a failing hook is logged (its name and its exception, at ERROR) without taking the app down."""
    events: list[str] = []
    beat = asyncio.Event()

    async def ticker(service: Service) -> None:
        events.append(f"start {service.settings.port}")
        try:
            while True:
                service.collector.record_heartbeat("Synthetic")
                beat.set()
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    async def broken(service: Service) -> None:
        raise RuntimeError("hook failed")

    def failure_logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "ark_obs.service" and "background hook" in r.getMessage()]

    caplog.set_level(logging.ERROR, logger="ark_obs.service")
    app = create_app(settings(), background=[ticker, broken])
    async with serve(app) as c:
        await asyncio.wait_for(beat.wait(), 10)
        deadline = time.monotonic() + 10
        while not failure_logged() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert (await c.get("/healthz")).status_code == 200
        fams = families((await c.get("/metrics", params={"name[]": "ark_agent_up"})).text)
        assert fams["ark_agent_up"].samples[0].labels == {"agent": "Synthetic"}
    assert events == ["start 9871", "cancelled"]
    (record,) = failure_logged()
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "background hook broken failed"
    assert record.exc_info is not None and repr(record.exc_info[1]) == "RuntimeError('hook failed')"


async def test_shutdown_flushes_buffered_spans(redis_url: str) -> None:
    """Spans recorded in-process and still buffered for Redis are in Redis once the app has shut down."""
    app = create_app(settings(trace_store=redis_url))
    service: Service = app.state.service
    async with serve(app):
        store = service.collector.traces.store
        assert isinstance(store, RedisStore)
        store._worker.stop()  # type: ignore[union-attr]  # hold spans in the buffer until shutdown
        service.collector.record_trace_span(TRACE, "Kyle")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert client.hgetall(f"ark:obs:t:{TRACE}"), "buffered span lost at shutdown"
    finally:
        client.close()


async def test_spans_reach_a_shared_redis_store(redis_url: str) -> None:
    """With a Redis trace store a 200 means another reader of that Redis already sees the spans."""
    async with serve(create_app(settings(trace_store=redis_url))) as c:
        r = await c.post("/spans", json={"spans": [{"trace_id": TRACE, "agent": a} for a in PIPELINE[:2]]})
        assert r.status_code == 200
        reader = RedisStore.from_url(redis_url)
        try:
            record = reader.get(TRACE)
        finally:
            reader.close()
        assert record is not None and record.agents == ("Kyle", "Joey")


def test_collector_is_built_from_settings() -> None:
    """Without a collector, the app builds one from the settings (retention, pipeline, TTL, capacity)."""
    app = create_app(settings(retention_seconds=600, pipeline="A,B", trace_ttl_seconds=12, max_in_flight_traces=7))
    service: Service = app.state.service
    collector = service.collector
    assert collector.window.retention == 600
    assert collector.traces.pipeline == ("A", "B")
    assert collector.traces.settings.ttl_seconds == 12 and collector.traces.settings.max_in_flight == 7
    for owned in service.owned:
        owned.close()


async def test_gc_freeze_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """The serve-time GC hook collects the young generations and freezes the survivors every period,
    and every full period thaws everything for one full collection."""
    import gc

    from ark_obs.service import freeze_long_lived_objects

    calls: list[str] = []
    real_collect, real_unfreeze = gc.collect, gc.unfreeze

    def collect(generation: int = 2) -> int:
        calls.append(f"collect{generation}")
        return real_collect(generation)

    def unfreeze() -> None:
        calls.append("unfreeze")
        real_unfreeze()

    monkeypatch.setattr(gc, "collect", collect)
    monkeypatch.setattr(gc, "unfreeze", unfreeze)
    service: Service = create_app(settings()).state.service
    task = asyncio.create_task(freeze_long_lived_objects(service, every=0.01, full_every=0.08))
    frozen = 0
    deadline = time.monotonic() + 60
    try:
        # until one full period has thawed and collected everything (a full collection of this test session's
        # heap is slow: stop after the first instead of a fixed number of periods)
        while "unfreeze" not in calls[:-1] or "collect1" not in calls:
            assert time.monotonic() < deadline, calls
            await asyncio.sleep(0.01)
            frozen = max(frozen, gc.get_freeze_count())
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        real_unfreeze()
        for owned in service.owned:
            owned.close()
    assert frozen > 1000, "survivors were not frozen"
    assert "collect1" in calls
    full = calls.index("unfreeze")
    assert calls[full + 1] == "collect2" and "collect1" in calls[:full]


async def test_heartbeat_over_the_agent_limit_is_503_not_200() -> None:
    """A beat the monitor refuses (it already tracks its maximum of agents outside the pipeline) is a
    503, never a false 200; pipeline agents are always admitted."""
    collector = manual_collector(FakeClock(), max_agents=2)
    async with serve(create_app(settings(), collector)) as c:
        assert (await c.post("/heartbeats/Extra1")).status_code == 200
        assert (await c.post("/heartbeats/Extra2")).status_code == 200
        r = await c.post("/heartbeats/Extra3")
        assert r.status_code == 503 and "cardinality" in r.json()["detail"]
        assert (await c.post("/heartbeats/Extra1")).status_code == 200  # known agents still beat
        assert (await c.post("/heartbeats/Kenny")).status_code == 200  # the pipeline is never locked out


# --- refusals are counted ---------------------------------------------------------------------------
async def test_every_refusal_is_counted_by_reason() -> None:
    """401, 413 (body and batch) and 422 answers each add one to ark_obs_requests_refused_total under their
    reason, every reason is exported at 0 from the first scrape, and a 200 counts nothing (503: the
    store-down test)."""
    app = create_app(settings(ingest_token="t" * 16, max_body_bytes=2048, max_batch_spans=2))

    def refused(text: str) -> dict[str, float]:
        fams = families(text)
        return {
            s.labels["reason"]: s.value for s in fams["ark_obs_requests_refused"].samples if s.name.endswith("_total")
        }

    auth = {"Authorization": "Bearer " + "t" * 16}
    async with serve(app) as c:
        assert refused((await c.get("/metrics")).text) == dict.fromkeys(
            ("unauthorized", "forbidden", "too_large", "invalid", "busy", "unavailable"), 0.0
        )
        assert (await c.post("/heartbeats/Kyle")).status_code == 401
        assert (await c.post("/spans", content=b"x" * 4096, headers=auth)).status_code == 413
        spans = [{"trace_id": "c" * 32, "agent": a} for a in ("Kyle", "Joey", "HRM")]
        assert (await c.post("/spans", json={"spans": spans}, headers=auth)).status_code == 413
        assert (await c.post("/spans", json={"spans": [{"agent": "Kyle"}]}, headers=auth)).status_code == 422
        assert (await c.post("/heartbeats/Kyle", headers=auth)).status_code == 200
        counts = refused((await c.get("/metrics")).text)
    assert counts == {
        "unauthorized": 1.0,
        "forbidden": 0.0,  # a token bound to agents: tests/service/test_agent_tokens.py
        "too_large": 2.0,
        "invalid": 1.0,
        "busy": 0.0,
        "unavailable": 0.0,
    }


async def test_422_texts_are_cut_at_200_characters(client: httpx.AsyncClient) -> None:
    """A location part (here an unknown field's name) of 200 characters is shown whole; one of 201 is cut to its
    first 200, marked "..."; every msg and type stays within 200 characters plus the mark."""
    exact, over = "k" * 200, "x" * 190 + "y" * 11
    spans = [{"trace_id": TRACE, "agent": "Kyle", exact: 1}, {"trace_id": TRACE, "agent": "Kyle", over: 1}]
    r = await client.post("/spans", json={"spans": spans})
    assert r.status_code == 422
    parts = [part for e in r.json()["detail"] for part in e["loc"] if isinstance(part, str)]
    assert exact in parts
    assert "x" * 190 + "y" * 10 + "..." in parts and over not in parts
    for e in r.json()["detail"]:
        assert len(e["msg"]) <= 203 and len(e["type"]) <= 203
