"""One trace id everywhere: an active OpenTelemetry span names the trace for ark-obs' context, exemplars and
decorators; ``instrument_agent_method`` can open the OTel span and record the continuity span itself."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

from ark_obs.context import bind_trace_id, current_trace_id, current_traceparent, parse_traceparent
from ark_obs.instrumentation import instrument_agent_method, with_trace_id
from ark_obs.metrics import MetricsCollector

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
def provider() -> TracerProvider:
    """The process' global SDK tracer provider (set once; OpenTelemetry allows one per process)."""
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        current = trace.get_tracer_provider()
    assert isinstance(current, TracerProvider)
    return current


@pytest.fixture
def finished(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    """Spans the global provider finishes during one test."""
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    processor.shutdown()  # the provider keeps it, but a shut-down processor exports nothing more


def _exemplars(collector: MetricsCollector, metric: str) -> set[str]:
    text = openmetrics(collector.registry.prometheus).decode()
    return {
        line.split('trace_id="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith(f"{metric}_bucket") and 'trace_id="' in line
    }


def test_active_span_is_the_current_trace_and_the_exemplar(provider: TracerProvider) -> None:
    """Inside an OTel span: current_trace_id() is its trace id and an observation's exemplar carries it;
    an id bound explicitly still wins; outside any span there is none."""
    collector = MetricsCollector(ticker=False)
    assert current_trace_id() is None
    with provider.get_tracer("t").start_as_current_span("work") as span:
        tid = format(span.get_span_context().trace_id, "032x")
        assert current_trace_id() == tid
        collector.observe_histogram("hrm_eval_latency_ms", 80.0)
        with bind_trace_id(TRACE):
            assert current_trace_id() == TRACE
    assert _exemplars(collector, "hrm_eval_latency_ms") == {tid}
    assert current_trace_id() is None


def test_current_traceparent_matches_the_otel_propagator(provider: TracerProvider) -> None:
    """Without a bound id, current_traceparent() names the active span exactly as OTel's propagator injects it,
    and parse_traceparent reads back what the propagator extracts."""
    with provider.get_tracer("t").start_as_current_span("work"):
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        assert current_traceparent() == carrier["traceparent"]
    parsed = parse_traceparent(carrier["traceparent"])
    assert parsed is not None
    extracted = trace.get_current_span(extract(carrier)).get_span_context()
    assert parsed.trace_id == format(extracted.trace_id, "032x")
    assert parsed.parent_id == format(extracted.span_id, "016x")


async def test_with_trace_id_takes_the_active_spans_trace(provider: TracerProvider) -> None:
    """A decorated call without a trace id inside an OTel span gets the span's trace id (sync and async)."""

    @with_trace_id
    def sync_step(trace_id: str | None = None) -> str | None:
        return trace_id

    @with_trace_id
    async def async_step(signal: int, trace_id: str | None = None) -> str | None:
        await asyncio.sleep(0)
        return trace_id

    with provider.get_tracer("t").start_as_current_span("work") as span:
        tid = format(span.get_span_context().trace_id, "032x")
        assert sync_step() == tid
        assert await async_step(1) == tid
    assert sync_step() not in (None, tid)  # outside a span: a new id


def test_decorator_opens_an_otel_span_joined_to_the_bound_trace(finished: InMemorySpanExporter) -> None:
    """otel_span=True: one span per call named after the method, in the bound trace; an
    exception marks it ERROR; record_span=True puts the agent's part into continuity."""
    collector = MetricsCollector(ticker=False)

    class Joey:
        @instrument_agent_method(latency_metric="otel_match_ms", collector=collector, otel_span=True, record_span=True)
        def match(self, fail: bool = False) -> str | None:
            if fail:
                raise ValueError("no match")
            return current_trace_id()

    with bind_trace_id(TRACE):
        assert Joey().match() == TRACE
        with pytest.raises(ValueError):
            Joey().match(fail=True)
    spans = finished.get_finished_spans()
    assert [s.name for s in spans] == [
        "test_decorator_opens_an_otel_span_joined_to_the_bound_trace.<locals>.Joey.match"
    ] * 2
    assert {format(s.context.trace_id, "032x") for s in spans} == {TRACE}
    assert [s.status.status_code for s in spans] == [StatusCode.UNSET, StatusCode.ERROR]
    report = collector.traces.validate(TRACE, ["Joey"])
    assert report.complete and report.failed_agents == ("Joey",)
    assert _exemplars(collector, "otel_match_ms") == {TRACE}


async def test_decorator_without_a_bound_id_uses_its_spans_trace(finished: InMemorySpanExporter) -> None:
    """No id anywhere: the decorator's own OTel span's trace id is the call's trace id, in the exemplar,
    the continuity span and the span exported to the tracing backend alike."""
    collector = MetricsCollector(ticker=False)

    class Kenny:
        @instrument_agent_method(latency_metric="otel_gate_ms", collector=collector, otel_span=True, record_span=True)
        @with_trace_id
        async def gate(self, trace_id: str | None = None) -> str | None:
            return trace_id

    tid = await Kenny().gate()
    (span,) = finished.get_finished_spans()
    assert tid == format(span.context.trace_id, "032x")
    assert collector.traces.validate(tid, ["Kenny"]).complete
    assert _exemplars(collector, "otel_gate_ms") == {tid}


def test_otel_spans_are_off_by_default(finished: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without otel_span or ARK_OBS_OTEL_SPANS no span is opened; the environment variable turns them on."""
    collector = MetricsCollector(ticker=False)
    monkeypatch.delenv("ARK_OBS_OTEL_SPANS", raising=False)

    @instrument_agent_method(latency_metric="otel_off_ms", agent="HRM", collector=collector)
    def off() -> None:
        pass

    monkeypatch.setenv("ARK_OBS_OTEL_SPANS", "true")

    @instrument_agent_method(latency_metric="otel_on_ms", agent="HRM", collector=collector)
    def on() -> None:
        pass

    off()
    assert finished.get_finished_spans() == ()
    on()
    assert [s.name for s in finished.get_finished_spans()] == ["test_otel_spans_are_off_by_default.<locals>.on"]


def test_grafana_tempo_example_links_exemplars_to_tempo_and_ark_obs() -> None:
    """The Tempo example keeps the Prometheus uid the dashboards use and links each trace_id exemplar to both
    the Tempo datasource it defines and ark-obs' /traces/{id}."""
    from pathlib import Path

    import yaml

    path = Path(__file__).parents[1] / "deploy" / "grafana" / "examples" / "tempo-datasources.yml"
    sources = {d["type"]: d for d in yaml.safe_load(path.read_text())["datasources"]}
    assert sources["prometheus"]["uid"] == "ark-prometheus"
    links = sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert {link["name"] for link in links} == {"trace_id"}
    assert [link.get("datasourceUid") for link in links if "datasourceUid" in link] == [sources["tempo"]["uid"]]
    assert [link["url"] for link in links if "url" in link] == ["http://127.0.0.1:9871/traces/${__value.raw}"]


def test_fast_span_reader_agrees_with_the_public_api(provider: TracerProvider) -> None:
    """ark-obs reads the active span around get_current_span (cheaper); both see the same span, or none."""
    from ark_obs.context import _current_otel_span

    assert _current_otel_span() in (None, trace.INVALID_SPAN)
    with provider.get_tracer("t").start_as_current_span("outer") as outer:
        assert _current_otel_span() is trace.get_current_span() is outer
        with provider.get_tracer("t").start_as_current_span("inner") as inner:
            assert _current_otel_span() is trace.get_current_span() is inner
        assert _current_otel_span() is outer
    assert _current_otel_span() in (None, trace.INVALID_SPAN)
