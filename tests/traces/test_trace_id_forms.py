"""One signal, one trace: a UUID id and its W3C form (what traceparent carries) are the same trace everywhere."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from ark_obs.context import bind_trace_id, canonical_trace_id, current_traceparent, parse_traceparent
from ark_obs.instrumentation import MetricsContext, instrument_agent_method, with_trace_id
from ark_obs.metrics import MetricsCollector
from ark_obs.service import create_app
from ark_obs.settings import Settings
from ark_obs.traces import DEFAULT_PIPELINE, TraceMonitor, TraceStatus
from ark_obs.traces.memory import MemoryStore
from ark_obs.traces.redis_store import RedisStore

PIPELINE = DEFAULT_PIPELINE
DASHED = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
HEX = "3f2504e04f8941d39a0c0305e82c3301"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def in_flight(collector: MetricsCollector) -> float | None:
    return collector.registry.prometheus.get_sample_value("ark_traces_in_flight")


@pytest.fixture(params=["memory", "redis"])
def monitor(request: pytest.FixtureRequest) -> Iterator[TraceMonitor]:
    """A sweeping monitor on the parametrized store (Redis: the session server, emptied)."""
    store = MemoryStore() if request.param == "memory" else RedisStore.from_url(request.getfixturevalue("redis_url"))
    collector = MetricsCollector(ticker=False)
    mon = TraceMonitor(collector, store, pipeline=PIPELINE, sweep=True, background=False)
    collector.traces = mon
    yield mon
    mon.close()
    store.close()


def test_canonical_form_is_the_w3c_form_and_other_ids_are_untouched() -> None:
    """The UUID form maps to its 32-hex form; the hex form, and ids of other shapes, map to themselves."""
    assert canonical_trace_id(DASHED) == HEX
    assert canonical_trace_id(HEX) == HEX
    assert canonical_trace_id("abc-123") == "abc-123"
    # RFC 4122 accepts upper-case UUIDs on input; the trace is the one its (lower-case) traceparent names
    assert canonical_trace_id(DASHED.upper()) == HEX
    # 36 characters but not shaped like a UUID (a fifth dash): an id of its own, not rewritten
    assert canonical_trace_id("3f2504e0-4f89-41d3-9a0c-0305e82c330-") == "3f2504e0-4f89-41d3-9a0c-0305e82c330-"
    assert canonical_trace_id("3f2504e0x4f89-41d3-9a0c-0305e82c3301") == "3f2504e0x4f89-41d3-9a0c-0305e82c3301"


def test_five_agents_alternating_forms_in_process_make_one_trace(monitor: TraceMonitor) -> None:
    """Kyle..Aletheia record under the UUID and the traceparent's form in turn, through every in-process entry.

    Seed API, @with_trace_id + @instrument_agent_method, MetricsContext and the traceparent of the bound
    id: one trace, in flight (gauge 1) until Aletheia, then complete once, answered under either form.
    """
    collector = monitor.collector

    # Kyle: the seed's API with the seed's UUID
    collector.record_trace_span(DASHED, "Kyle")
    monitor.flush()
    assert in_flight(collector) == 1.0

    # Joey: received the traceparent Kyle sent on, records under its 32-hex id via a decorated method
    with bind_trace_id(DASHED):
        header = current_traceparent()
    parsed = parse_traceparent(header)
    assert parsed is not None and parsed.trace_id == HEX

    class Joey:
        @instrument_agent_method(latency_metric="joey_match_latency_ms", collector=collector)
        @with_trace_id(collector=collector)
        def match(self, signal: object, trace_id: str) -> str:
            collector.record_trace_span(trace_id, "Joey")
            return trace_id

    assert Joey().match({}, trace_id=parsed.trace_id) == HEX

    # HRM: the UUID again, inside a MetricsContext
    with MetricsContext("hrm_eval", "HRM", trace_id=DASHED, collector=collector) as ctx:
        collector.record_trace_span(ctx.trace_id or "", "HRM")
    # Kenny: the hex form; Aletheia: the UUID form
    monitor.record_span(HEX, "Kenny")
    monitor.flush()
    assert in_flight(collector) == 1.0
    assert monitor.validate(DASHED).status is TraceStatus.IN_FLIGHT
    monitor.record_span(DASHED, "Aletheia")
    monitor.flush()

    for asked in (DASHED, HEX):
        report = monitor.validate(asked)
        assert report.complete and report.status is TraceStatus.COMPLETE
        assert report.agents_seen == PIPELINE and report.span_count == 5
        assert report.trace_id == HEX and report.requested_id == asked
    assert in_flight(collector) == 0.0
    assert collector.registry.prometheus.get_sample_value("ark_traces_complete_total") == 1.0
    assert collector.registry.prometheus.get_sample_value("ark_traces_incomplete_total", {"agent": "Kenny"}) is None


def test_exemplars_name_the_canonical_trace() -> None:
    """An observation made under the UUID form carries the W3C form as exemplar: the id /traces/{id} stores."""
    collector = MetricsCollector(ticker=False)
    with bind_trace_id(DASHED):
        collector.observe_histogram("ark_pass_latency_ms", 285.3)
    from prometheus_client.openmetrics.exposition import generate_latest

    text = generate_latest(collector.registry.prometheus).decode()
    fams = {f.name: f for f in parse_openmetrics(text)}
    exemplars = [s.exemplar for s in fams["ark_pass_latency_ms"].samples if s.exemplar is not None]
    assert [e.labels for e in exemplars] == [{"trace_id": HEX}]


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ark-obs.test") as client:
            yield client


async def gauge(client: httpx.AsyncClient, name: str) -> float | None:
    text = (await client.get("/metrics")).text
    for family in parse_text(text):
        for s in family.samples:
            if s.name == name:
                return float(s.value)
    return None


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_five_agents_alternating_forms_over_http_make_one_trace(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """POST /traces/{uuid}/spans, /traceparent/spans, /spans (both forms) and GET /traces/{either}: one trace."""
    store = "memory" if backend == "memory" else request.getfixturevalue("redis_url")
    app = create_app(Settings(_env_file=None, trace_store=store, pipeline=",".join(PIPELINE)))  # type: ignore[call-arg]
    header = f"00-{HEX}-00f067aa0ba902b7-01"
    posts: list[Callable[[httpx.AsyncClient], Any]] = [
        lambda c: c.post(f"/traces/{DASHED}/spans", json={"agent": "Kyle"}),
        lambda c: c.post("/traceparent/spans", json={"agent": "Joey"}, headers={"traceparent": header}),
        lambda c: c.post("/spans", json={"spans": [{"trace_id": DASHED, "agent": "HRM"}]}),
        lambda c: c.post(f"/traces/{HEX}/spans", json={"agent": "Kenny"}),
    ]
    async with serve(app) as client:
        for post in posts:
            r = await post(client)
            assert r.status_code in (200, 201, 202), r.text
            assert await gauge(client, "ark_traces_in_flight") == 1.0
        for asked in (DASHED, HEX):
            body = (await client.get(f"/traces/{asked}")).json()
            assert body["trace_id"] == HEX and body["requested_id"] == asked
            assert body["status"] == "in_flight" and body["missing_agents"] == ["Aletheia"]
        r = await client.post("/spans", json={"spans": [{"trace_id": HEX, "agent": "Aletheia"}]})
        assert r.status_code in (200, 201, 202), r.text

        async def settled() -> dict[str, Any]:
            for _ in range(200):  # the service's sweep counts the outcome in the background
                body: dict[str, Any] = (await client.get(f"/traces/{DASHED}")).json()
                if body["status"] == "complete" and await gauge(client, "ark_traces_complete_total") == 1.0:
                    return body
                await asyncio.sleep(0.05)
            raise AssertionError(f"trace not complete: {body}")

        body = await settled()
        assert body["complete"] and body["agents_seen"] == list(PIPELINE) and body["span_count"] == 5
        assert body["trace_id"] == HEX and body["requested_id"] == DASHED
        assert await gauge(client, "ark_traces_in_flight") == 0.0
