"""Agent instrumentation: the seed's decorators, trace ids that follow the signal, MetricsContext, state ops."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

from ark_obs.catalog import latency_ms
from ark_obs.context import is_valid_trace_id
from ark_obs.instrumentation import (
    MetricsContext,
    bind_trace_id,
    current_trace_id,
    instrument_agent_method,
    run_in_executor,
    track_state_operation,
    with_trace_id,
)
from ark_obs.metrics import MetricsCollector, get_collector
from ark_obs.registry import LabelError, MetricTypeError

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER = "0af7651916cd43dd8448eb211c80319c"
HEADER = f"00-{TRACE}-00f067aa0ba902b7-01"
SEED_UUID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


@pytest.fixture(autouse=True)
def no_leaked_trace() -> Iterator[None]:
    """Every test starts and ends with no trace id bound."""
    assert current_trace_id() is None
    yield
    assert current_trace_id() is None


@pytest.fixture
def c() -> MetricsCollector:
    """A collector of this test's own."""
    return MetricsCollector(ticker=False)


def value(collector: MetricsCollector, name: str, **labels: str) -> float:
    """A counter's current value over the series matching ``labels``."""
    return sum(r.values[0] for r in collector.readings(name, labels))


def count(collector: MetricsCollector, name: str, **labels: str) -> float:
    """How many observations a histogram holds over the series matching ``labels``."""
    return sum(sum(r.values[:-1]) for r in collector.readings(name, labels))


def total(collector: MetricsCollector, name: str, **labels: str) -> float:
    """The sum of a histogram's observations over the series matching ``labels``."""
    return sum(r.values[-1] for r in collector.readings(name, labels))


def invalid(collector: MetricsCollector) -> float:
    return value(collector, "ark_traceparent_invalid_total")


# --- the seed's examples, unchanged ----------------------------------------------------------------------
class BaseAgent:
    def __init__(self) -> None:
        self.logger = logging.getLogger(type(self).__name__)


Dict = dict
seen_trace_ids: list[str] = []


class Kyle(BaseAgent):
    @instrument_agent_method(
        latency_metric="kyle_process_latency_ms",
        counter_metric="kyle_signals_processed_total"
    )  # fmt: skip
    @with_trace_id
    async def process_signal(self, signal: Dict, trace_id: str):  # type: ignore[no-untyped-def]
        # Latency, throughput, and trace_id automatically tracked
        self.logger.info(f"Processing {trace_id}")
        seen_trace_ids.append(trace_id)
        result = {"signal": signal, "trace_id": trace_id}
        return result


class KyleShort(BaseAgent):
    @instrument_agent_method(latency_metric="kyle_process_ms")
    @with_trace_id
    async def process_signal(self, signal, trace_id):  # type: ignore[no-untyped-def]
        # Just write business logic - metrics automatic
        pass


async def test_seed_example_runs_unchanged() -> None:
    """The seed's Kyle records latency and count on the default collector, labelled Kyle/process_signal."""
    collector = get_collector()
    labels = {"agent": "Kyle", "method": "process_signal"}
    before = (count(collector, "kyle_process_latency_ms", **labels),
              value(collector, "kyle_signals_processed_total", **labels))  # fmt: skip
    result = await Kyle().process_signal({"symbol": "ES"})
    assert result["signal"] == {"symbol": "ES"}
    assert is_valid_trace_id(result["trace_id"])
    assert count(collector, "kyle_process_latency_ms", **labels) == before[0] + 1
    assert value(collector, "kyle_signals_processed_total", **labels) == before[1] + 1
    assert collector.metric("kyle_process_latency_ms").spec.labels == ("agent", "method")

    assert await KyleShort().process_signal({"symbol": "ES"}) is None
    assert count(collector, "kyle_process_ms", agent="KyleShort", method="process_signal") >= 1


async def test_seed_example_with_an_explicit_trace_id() -> None:
    """The seed's UUID trace id, passed by the caller, reaches the method unchanged."""
    result = await Kyle().process_signal({"symbol": "ES"}, trace_id=SEED_UUID)
    assert result["trace_id"] == SEED_UUID
    result = await Kyle().process_signal({"symbol": "ES"}, SEED_UUID)
    assert result["trace_id"] == SEED_UUID


# --- timing and counting ------------------------------------------------------------------------------
async def test_async_times_the_awaited_work(c: MetricsCollector) -> None:
    """On an async def the latency covers the awaited body (50 ms), not just the coroutine's creation."""

    class Joey:
        @instrument_agent_method(latency_metric="joey_ms", counter_metric="joey_total", collector=c)
        async def find(self, signal: int) -> int:
            await asyncio.sleep(0.05)
            return signal * 2

    assert await Joey().find(21) == 42
    assert count(c, "joey_ms", agent="Joey", method="find") == 1
    assert 50 <= total(c, "joey_ms") < 1000
    assert value(c, "joey_total", agent="Joey", method="find") == 1


async def test_an_object_with_async_call_is_timed_when_awaited(c: MetricsCollector) -> None:
    """A callable object whose __call__ is async gets an async wrapper that times the awaited call."""

    class Scorer:
        async def __call__(self, signal: int, trace_id: str | None = None) -> str | None:
            await asyncio.sleep(0.02)
            return trace_id

    scorer = instrument_agent_method(latency_metric="scorer_ms", collector=c)(with_trace_id(Scorer()))
    assert inspect.iscoroutinefunction(scorer)
    assert await scorer(1, trace_id=TRACE) == TRACE
    assert 20 <= total(c, "scorer_ms", method="Scorer") < 1000


def test_sync_function_and_method(c: MetricsCollector) -> None:
    """A sync method and a plain function are timed in ms and counted; return values are the same object."""
    payload = object()

    class Kenny:
        @instrument_agent_method(latency_metric="kenny_ms", counter_metric="kenny_total", collector=c)
        def execute(self, order: object) -> object:
            time.sleep(0.02)
            return order

    @instrument_agent_method(latency_metric="fn_ms", counter_metric="fn_total", collector=c)
    def score(x: object) -> object:
        return x

    assert Kenny().execute(payload) is payload
    assert score(payload) is payload
    assert count(c, "kenny_ms", agent="Kenny", method="execute") == 1
    assert 20 <= total(c, "kenny_ms") < 1000
    assert value(c, "kenny_total", agent="Kenny", method="execute") == 1
    # a plain function is labelled with its module's name
    assert value(c, "fn_total", agent="test_instrumentation", method="score") == 1


def test_agent_label_follows_the_instance_class(c: MetricsCollector) -> None:
    """A method inherited by a subclass is labelled with the subclass; agent= overrides the class name."""

    class Agent:
        @instrument_agent_method(counter_metric="runs_total", collector=c)
        def run(self) -> None:
            pass

        @instrument_agent_method(counter_metric="named_total", agent="Aletheia", collector=c)
        def audit(self) -> None:
            pass

    class Joey(Agent):
        pass

    Agent().run()
    Joey().run()
    Joey().run()
    Joey().audit()
    assert value(c, "runs_total", agent="Agent", method="run") == 1
    assert value(c, "runs_total", agent="Joey", method="run") == 2
    assert value(c, "named_total", agent="Aletheia", method="audit") == 1
    assert value(c, "named_total") == 1


def test_static_and_class_methods_take_the_defining_class(c: MetricsCollector) -> None:
    """Under @staticmethod or @classmethod the decorator labels calls with the class that defines them."""

    class HRM:
        @staticmethod
        @instrument_agent_method(counter_metric="static_total", collector=c)
        def check(rule: str) -> str:
            return rule

        @classmethod
        @instrument_agent_method(counter_metric="class_total", collector=c)
        def build(cls) -> str:
            return cls.__name__

    assert HRM.check("max_position_size") == "max_position_size"
    assert HRM().build() == "HRM"
    assert value(c, "static_total", agent="HRM", method="check") == 1
    assert value(c, "class_total", agent="HRM", method="build") == 1


def test_catalogue_metrics_without_labels_are_recorded_as_they_are(c: MetricsCollector) -> None:
    """An unlabelled catalogue histogram (hrm_eval_latency_ms) is observed without agent/method labels."""

    class HRM:
        @instrument_agent_method(latency_metric="hrm_eval_latency_ms", collector=c)
        def evaluate(self) -> bool:
            return True

    HRM().evaluate()
    assert count(c, "hrm_eval_latency_ms") == 1
    assert c.metric("hrm_eval_latency_ms").spec.labels == ()


def test_two_methods_share_a_metric(c: MetricsCollector) -> None:
    """A metric declared by one decoration is reused by the next, each call under its own method label."""

    class Kyle:
        @instrument_agent_method(latency_metric="kyle_ms", collector=c)
        def ingest(self) -> None:
            pass

        @instrument_agent_method(latency_metric="kyle_ms", collector=c)
        def replay(self) -> None:
            pass

    Kyle().ingest()
    Kyle().replay()
    assert count(c, "kyle_ms", method="ingest") == 1
    assert count(c, "kyle_ms", method="replay") == 1


def test_metrics_are_resolved_at_decoration_time(c: MetricsCollector, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls never look a metric up by name: the registry could vanish after decoration."""

    class Kyle:
        @instrument_agent_method(latency_metric="kyle_ms", counter_metric="kyle_total", collector=c)
        @with_trace_id
        def ingest(self, trace_id: str) -> str:
            if trace_id == OTHER:
                raise ValueError
            return trace_id

    def no_lookups(name: str) -> Any:
        raise AssertionError(f"looked up {name} at call time")

    monkeypatch.setattr(c.registry, "get", no_lookups)
    Kyle().ingest()
    with pytest.raises(ValueError):
        Kyle().ingest(trace_id=OTHER)
    monkeypatch.undo()
    assert value(c, "kyle_total", agent="Kyle") == 2


def test_the_default_collector_is_taken_at_decoration(c: MetricsCollector) -> None:
    """Without collector= the decorator records on get_collector(), the one the seed's functions use."""

    @instrument_agent_method(counter_metric="default_collector_calls_total")
    def work() -> None:
        pass

    before = value(get_collector(), "default_collector_calls_total")
    work()
    assert value(get_collector(), "default_collector_calls_total") == before + 1
    assert "default_collector_calls_total" not in c.registry


def test_threads_count_every_call(c: MetricsCollector) -> None:
    """8 threads x 500 calls of one instrumented method: 4,000 counted, 4,000 observed."""

    class Kenny:
        @instrument_agent_method(latency_metric="t_ms", counter_metric="t_total", collector=c)
        @with_trace_id
        def execute(self, trace_id: str) -> str:
            return trace_id

    kenny = Kenny()

    def work() -> None:
        for _ in range(500):
            kenny.execute()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert value(c, "t_total") == 4000
    assert count(c, "t_ms") == 4000


# --- exceptions and cancellation ------------------------------------------------------------------------
def _frames(exc: BaseException) -> list[str]:
    return [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


def test_sync_exception_is_counted_and_reraised_unchanged(c: MetricsCollector) -> None:
    """The same exception object comes out with its traceback; errors, latency and count are recorded."""
    error = ValueError("bad signal")

    class Joey:
        @instrument_agent_method(latency_metric="j_ms", counter_metric="j_total", collector=c)
        @with_trace_id
        def match(self, trace_id: str) -> None:
            raise error

    with pytest.raises(ValueError) as caught:
        Joey().match()
    assert caught.value is error
    assert _frames(caught.value)[-1] == "match"  # the raising frame is still the innermost one
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert value(c, "ark_agent_errors_total", agent="Joey", method="match", exception="ValueError") == 1
    assert count(c, "j_ms", agent="Joey") == 1
    assert value(c, "j_total", agent="Joey") == 1


async def test_async_exception_is_counted_and_reraised_unchanged(c: MetricsCollector) -> None:
    """An async method's exception: same object, innermost frame intact, counted by exception type."""

    class BrokerDown(ConnectionError):
        pass

    class Kenny:
        @instrument_agent_method(latency_metric="k_ms", collector=c)
        async def execute(self) -> None:
            await asyncio.sleep(0)
            raise BrokerDown("broker down")

    with pytest.raises(BrokerDown) as caught:
        await Kenny().execute()
    assert str(caught.value) == "broker down"
    assert _frames(caught.value)[-1] == "execute"
    assert value(c, "ark_agent_errors_total", agent="Kenny", method="execute", exception="BrokerDown") == 1
    assert count(c, "k_ms", agent="Kenny") == 1


async def test_cancellation_is_not_an_error(c: MetricsCollector) -> None:
    """A cancelled call propagates CancelledError and is counted as cancelled, not as an error or a sample."""
    started = asyncio.Event()

    class Joey:
        @instrument_agent_method(latency_metric="c_ms", counter_metric="c_total", collector=c)
        @with_trace_id
        async def wait(self, trace_id: str) -> None:
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(Joey().wait())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert value(c, "ark_agent_cancellations_total", agent="Joey", method="wait") == 1
    assert value(c, "ark_agent_errors_total") == 0
    assert count(c, "c_ms") == 0
    assert value(c, "c_total") == 0


def test_keyboard_interrupt_passes_through_unrecorded(c: MetricsCollector) -> None:
    """KeyboardInterrupt is the process stopping, not the method failing: it propagates, nothing counted."""

    @instrument_agent_method(counter_metric="ki_total", collector=c)
    def work() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        work()
    assert value(c, "ark_agent_errors_total") == 0
    assert value(c, "ki_total") == 0


# --- wraps semantics -----------------------------------------------------------------------------------
def test_wraps_semantics() -> None:
    """Name, qualname, docstring, __wrapped__, signature and coroutine-ness stay the original's."""
    fused = Kyle.process_signal
    original = inspect.unwrap(fused)
    assert fused.__name__ == "process_signal"
    assert fused.__qualname__ == "Kyle.process_signal"
    assert fused.__module__ == __name__
    assert inspect.signature(fused) == inspect.signature(original)
    assert list(inspect.signature(fused).parameters) == ["self", "signal", "trace_id"]
    assert inspect.iscoroutinefunction(fused) and inspect.iscoroutinefunction(fused.__wrapped__)
    assert fused.__wrapped__.__wrapped__ is original

    def documented(x: int, *, trace_id: str = "") -> int:
        """Doubles x."""
        return 2 * x

    documented.custom = "kept"  # type: ignore[attr-defined]
    wrapped = instrument_agent_method(counter_metric="doc_total", collector=MetricsCollector(ticker=False))(
        with_trace_id(documented)
    )
    assert wrapped.__doc__ == "Doubles x."
    assert wrapped.custom == "kept"  # type: ignore[attr-defined]
    assert not inspect.iscoroutinefunction(wrapped)
    assert inspect.signature(wrapped) == inspect.signature(documented)
    assert wrapped(4) == 8


# --- decoration-time errors ------------------------------------------------------------------------------
def test_a_metric_of_another_type_fails_at_decoration(c: MetricsCollector) -> None:
    """A counter given as latency_metric (or a histogram as counter_metric) raises naming function and metric."""
    with pytest.raises(MetricTypeError, match=r"test_instrumentation.*ingest.*graveyard_validations_total"):

        @instrument_agent_method(latency_metric="graveyard_validations_total", collector=c)
        def ingest() -> None:
            pass

    with pytest.raises(MetricTypeError, match=r"execute.*counter_metric='ark_pass_latency_ms'"):

        @instrument_agent_method(counter_metric="ark_pass_latency_ms", collector=c)
        def execute() -> None:
            pass

    c.declare(latency_ms("mine_ms", "declared by hand"))
    with pytest.raises(MetricTypeError, match=r"audit.*mine_ms"):

        @instrument_agent_method(counter_metric="mine_ms", collector=c)
        def audit() -> None:
            pass


def test_a_new_counter_must_end_in_total(c: MetricsCollector) -> None:
    """A counter name without _total is refused at decoration, naming the function and the metric."""
    with pytest.raises(ValueError, match=r"count_me.*kyle_signals_processed.*_total"):

        @instrument_agent_method(counter_metric="kyle_signals_processed", collector=c)
        def count_me() -> None:
            pass


def test_a_label_the_decorator_cannot_fill_fails_at_decoration(c: MetricsCollector) -> None:
    """state_write_latency_ms needs an operation label: refused at decoration, naming both."""
    with pytest.raises(LabelError, match=r"write.*state_write_latency_ms.*operation"):

        class Core:
            @instrument_agent_method(latency_metric="state_write_latency_ms", collector=c)
            def write(self) -> None:
                pass


def test_bad_decorator_use_fails_clearly(c: MetricsCollector) -> None:
    """No parentheses, a non-callable, generators, staticmethod objects and conflicting names all raise now."""
    with pytest.raises(TypeError, match="parentheses"):

        @instrument_agent_method  # type: ignore[arg-type]
        def bare() -> None:
            pass

    with pytest.raises(TypeError, match=r"needs a function.*42"):
        instrument_agent_method(counter_metric="x_total", collector=c)(42)  # type: ignore[type-var]
    with pytest.raises(TypeError, match=r"latency_metric='x_ms'.*needs a function"):
        instrument_agent_method(latency_metric="x_ms", collector=c)("not callable")  # type: ignore[type-var]
    with pytest.raises(ValueError, match="both 'same'"):
        instrument_agent_method(latency_metric="same", counter_metric="same")
    with pytest.raises(ValueError, match="agent"):
        instrument_agent_method(counter_metric="x_total", agent="")
    with pytest.raises(TypeError, match="non-empty strings"):
        instrument_agent_method(latency_metric=7)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="below @staticmethod"):
        instrument_agent_method(counter_metric="x_total", collector=c)(staticmethod(len))  # type: ignore[type-var]

    def gen() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generators"):
        instrument_agent_method(counter_metric="x_total", collector=c)(gen)
    with pytest.raises(TypeError, match="generators"):
        with_trace_id(gen)


def test_with_trace_id_needs_somewhere_to_put_it() -> None:
    """A function without a trace_id parameter (or **kwargs), or with it positional-only, is refused."""
    with pytest.raises(TypeError, match=r"no_room.*no trace_id parameter"):

        @with_trace_id
        def no_room(signal: int) -> None:
            pass

    with pytest.raises(TypeError, match="keyword-only"):

        @with_trace_id
        def positional_only(trace_id: str, /) -> None:
            pass

    @with_trace_id
    def takes_kwargs(**kwargs: Any) -> Any:
        return kwargs["trace_id"]

    assert is_valid_trace_id(takes_kwargs())


# --- where the trace id comes from ------------------------------------------------------------------------
class Echo:
    """Methods that return what they were given, decorated in the ways agents use."""

    def __init__(self, collector: MetricsCollector) -> None:
        traced = with_trace_id(collector=collector)

        @traced
        def plain(signal: Any = None, trace_id: str | None = None) -> tuple[str | None, str | None]:
            return trace_id, current_trace_id()

        @traced
        def with_traceparent(trace_id: str, traceparent: str | None = None) -> tuple[str, str | None]:
            return trace_id, traceparent

        @traced
        def with_headers(headers: dict[str, str], trace_id: str) -> tuple[str, dict[str, str]]:
            return trace_id, headers

        self.plain, self.with_traceparent, self.with_headers = plain, with_traceparent, with_headers


def test_trace_id_source_order(c: MetricsCollector) -> None:
    """explicit argument > bound trace id > incoming traceparent > new id; bound inside, restored after."""
    echo = Echo(c)
    assert echo.plain(trace_id=TRACE) == (TRACE, TRACE)
    assert echo.plain(None, TRACE) == (TRACE, TRACE)
    with bind_trace_id(OTHER):
        assert echo.plain(trace_id=TRACE) == (TRACE, TRACE)  # explicit beats bound
        assert echo.plain() == (OTHER, OTHER)
        assert echo.plain(traceparent=HEADER) == (OTHER, OTHER)  # bound beats incoming
        assert current_trace_id() == OTHER
    assert echo.plain(traceparent=HEADER) == (TRACE, TRACE)
    fresh, bound = echo.plain()
    assert fresh == bound and is_valid_trace_id(fresh) and fresh not in (TRACE, OTHER)
    assert echo.plain()[0] != fresh  # a new one each time
    assert echo.plain(trace_id=SEED_UUID) == (SEED_UUID, SEED_UUID)
    assert invalid(c) == 0


def test_traceparent_and_headers_arguments(c: MetricsCollector) -> None:
    """A declared traceparent is read and passed on; a headers mapping is read (any case) and passed on."""
    echo = Echo(c)
    assert echo.with_traceparent(traceparent=HEADER) == (TRACE, HEADER)
    assert echo.with_traceparent(None, HEADER) == (TRACE, HEADER)
    headers = {"Content-Type": "application/json", "Traceparent": HEADER}
    tid, passed = echo.with_headers(headers)
    assert tid == TRACE and passed is headers and passed == {"Content-Type": "application/json", "Traceparent": HEADER}
    assert echo.with_headers(headers={"traceparent": HEADER})[0] == TRACE
    assert echo.with_headers({"accept": "*/*"})[0] not in (TRACE, None)
    assert invalid(c) == 0


@pytest.mark.parametrize("bad", ["abc-123", TRACE.upper(), "0" * 32, "", 42, uuid.UUID(TRACE)])
def test_malformed_ids_are_counted_and_replaced(c: MetricsCollector, bad: Any) -> None:
    """A malformed explicit or bound id is counted in ark_traceparent_invalid_total and skipped, never raised."""
    echo = Echo(c)
    tid, _ = echo.plain(trace_id=bad)
    assert is_valid_trace_id(tid) and tid != bad
    tid, _ = echo.plain(None, bad)
    assert is_valid_trace_id(tid)
    with bind_trace_id(OTHER):
        assert echo.plain(trace_id=bad) == (OTHER, OTHER)  # the next source applies
    with bind_trace_id(bad):
        tid, bound = echo.plain()
        assert tid == bound and is_valid_trace_id(tid)
        assert current_trace_id() == bad  # ours was bound for the call only
    assert invalid(c) == 4


@pytest.mark.parametrize(
    "header",
    ["ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", f"00-{'0' * 32}-00f067aa0ba902b7-01", "junk", ""],
)
def test_malformed_traceparents_are_counted_and_replaced(c: MetricsCollector, header: str) -> None:
    """An invalid traceparent argument or header is counted and a new trace id is used."""
    echo = Echo(c)
    tid, _ = echo.plain(traceparent=header)
    assert is_valid_trace_id(tid) and tid != TRACE
    assert is_valid_trace_id(echo.with_headers({"traceparent": header})[0])
    assert invalid(c) == 2


def test_invalid_ids_are_counted_on_the_instrumenting_collector(c: MetricsCollector) -> None:
    """Stacked under instrument_agent_method(collector=c), a bare @with_trace_id counts on c."""

    class Kyle:
        @instrument_agent_method(counter_metric="k_total", collector=c)
        @with_trace_id
        def ingest(self, trace_id: str) -> str:
            return trace_id

    assert is_valid_trace_id(Kyle().ingest(trace_id="abc-123"))
    assert invalid(c) == 1


async def test_async_sources(c: MetricsCollector) -> None:
    """The async wrapper follows the same source order and restores the context after the call."""

    @with_trace_id(collector=c)
    async def handle(trace_id: str, traceparent: str | None = None) -> tuple[str, str | None]:
        await asyncio.sleep(0)
        return trace_id, current_trace_id()

    assert await handle(traceparent=HEADER) == (TRACE, TRACE)
    assert await handle(OTHER) == (OTHER, OTHER)
    with bind_trace_id(OTHER):
        assert await handle() == (OTHER, OTHER)
    assert current_trace_id() is None


# --- propagation ---------------------------------------------------------------------------------------------
async def test_trace_id_follows_tasks_threads_and_executors(c: MetricsCollector) -> None:
    """create_task children, asyncio.to_thread and run_in_executor see the call's trace id; nested calls reuse it."""

    @with_trace_id(collector=c)
    async def inner(trace_id: str) -> str:
        return trace_id

    @with_trace_id(collector=c)
    async def outer(trace_id: str) -> dict[str, Any]:
        child = asyncio.create_task(_later())
        return {
            "task": await child,
            "thread": await asyncio.to_thread(current_trace_id),
            "executor": await run_in_executor(None, current_trace_id),
            "raw_executor": await asyncio.get_running_loop().run_in_executor(None, current_trace_id),
            "nested": await inner(),
        }

    async def _later() -> str | None:
        await asyncio.sleep(0.01)
        return current_trace_id()

    seen = await outer(trace_id=TRACE)
    assert seen == {"task": TRACE, "thread": TRACE, "executor": TRACE, "raw_executor": None, "nested": TRACE}


async def test_a_task_keeps_its_trace_after_the_call_returns(c: MetricsCollector) -> None:
    """A task started inside the call still sees its trace id after the call has unbound it."""
    release = asyncio.Event()

    async def background() -> str | None:
        await release.wait()
        return current_trace_id()

    @with_trace_id(collector=c)
    async def spawn(trace_id: str) -> asyncio.Task[str | None]:
        return asyncio.create_task(background())

    task = await spawn(trace_id=TRACE)
    assert current_trace_id() is None
    release.set()
    assert await task == TRACE


async def test_a_thousand_concurrent_traces_never_mix(c: MetricsCollector) -> None:
    """1,000 concurrent signals, each with its own trace id, see only their own at every await and hop."""

    class Joey:
        @instrument_agent_method(latency_metric="mix_ms", counter_metric="mix_total", collector=c)
        @with_trace_id
        async def process(self, n: int, trace_id: str) -> list[str | None]:
            seen = [current_trace_id()]
            for _ in range(3):
                await asyncio.sleep(0)
                seen.append(current_trace_id())
            seen.append(await self.nested())
            seen.append(await asyncio.create_task(self.nested()))
            if n % 50 == 0:  # threads are slower; a sample of them
                seen.append(await asyncio.to_thread(current_trace_id))
            return seen

        @with_trace_id
        async def nested(self, trace_id: str) -> str | None:
            await asyncio.sleep(0)
            assert trace_id == current_trace_id()
            return trace_id

    joey = Joey()
    ids = [f"{i:032x}" for i in range(1, 1001)]
    results = await asyncio.gather(*(joey.process(i, trace_id=tid) for i, tid in enumerate(ids)))
    mixed = [(tid, seen) for tid, seen in zip(ids, results, strict=True) if set(seen) != {tid}]
    assert mixed == []
    fresh = await asyncio.gather(*(joey.process(1) for _ in range(1000)))
    assert len({seen[0] for seen in fresh}) == 1000
    assert all(len(set(seen)) == 1 for seen in fresh)
    assert value(c, "mix_total", agent="Joey", method="process") == 2000


def _exemplar_ids(collector: MetricsCollector, metric: str) -> set[str]:
    text = openmetrics(collector.registry.prometheus).decode()
    return {
        line.split('trace_id="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith(f"{metric}_bucket") and 'trace_id="' in line
    }


async def test_latency_observations_carry_the_trace_id_as_exemplar(c: MetricsCollector) -> None:
    """Stacked either way round, the latency observation carries the call's trace id as an exemplar."""

    class Kyle:
        @instrument_agent_method(latency_metric="ex_ms", collector=c)
        @with_trace_id
        async def fused(self, trace_id: str) -> None:
            pass

        @with_trace_id
        @instrument_agent_method(latency_metric="ex2_ms", collector=c)
        async def reversed(self, trace_id: str) -> None:
            pass

    await Kyle().fused(trace_id=TRACE)
    await Kyle().reversed(trace_id=OTHER)
    assert _exemplar_ids(c, "ex_ms") == {TRACE}
    assert _exemplar_ids(c, "ex2_ms") == {OTHER}


# --- MetricsContext ---------------------------------------------------------------------------------------
async def ingest_signal(signal: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0.01)
    return {"ingested": signal, "trace_id": current_trace_id()}


async def test_metrics_context_seed_example(c: MetricsCollector) -> None:
    """The seed's async with MetricsContext(...) records success and latency and binds the trace id."""
    signal = {"symbol": "ES"}
    trace_id = SEED_UUID
    async with MetricsContext(
        operation_name="kyle_signal_ingestion",
        agent_name="Kyle",
        trace_id=trace_id,
        collector=c,
    ) as ctx:
        result = await ingest_signal(signal)
        ctx.set_result(result)
    assert ctx.result == {"ingested": signal, "trace_id": SEED_UUID}
    assert ctx.outcome == "success" and ctx.trace_id == SEED_UUID
    assert ctx.latency_ms is not None and ctx.latency_ms >= 10
    labels = {"operation": "kyle_signal_ingestion", "agent": "Kyle"}
    assert count(c, "ark_operation_latency_ms", **labels, outcome="success") == 1
    assert count(c, "ark_operation_latency_ms", **labels, outcome="error") == 0
    assert current_trace_id() is None


def test_metrics_context_sync_failure(c: MetricsCollector) -> None:
    """As a plain with: the exception propagates unchanged and is recorded as an error of that type."""
    error = TimeoutError("redis")
    with pytest.raises(TimeoutError) as caught, MetricsContext("state_write", "Kenny", collector=c) as ctx:
        assert current_trace_id() == ctx.trace_id and is_valid_trace_id(ctx.trace_id)
        raise error
    assert caught.value is error
    assert ctx.outcome == "error"
    assert count(c, "ark_operation_latency_ms", operation="state_write", agent="Kenny", outcome="error") == 1
    assert value(c, "ark_agent_errors_total", agent="Kenny", method="state_write", exception="TimeoutError") == 1


async def test_metrics_context_cancellation(c: MetricsCollector) -> None:
    """A cancelled block is counted as cancelled, observes no latency, and the cancellation propagates."""
    started = asyncio.Event()

    async def block() -> None:
        async with MetricsContext("wait", "Joey", collector=c):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(block())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert value(c, "ark_agent_cancellations_total", agent="Joey", method="wait") == 1
    assert count(c, "ark_operation_latency_ms") == 0
    assert value(c, "ark_agent_errors_total") == 0


def test_metrics_context_trace_id_sources(c: MetricsCollector) -> None:
    """Given id if valid, else the bound one, else new; a malformed one is counted; re-entry is refused."""
    with bind_trace_id(OTHER):
        with MetricsContext("op", "HRM", collector=c) as ctx:
            assert ctx.trace_id == OTHER
        with MetricsContext("op", "HRM", trace_id="abc-123", collector=c) as ctx:
            assert ctx.trace_id == OTHER
    with MetricsContext("op", "HRM", trace_id="abc-123", collector=c) as ctx:
        assert is_valid_trace_id(ctx.trace_id) and current_trace_id() == ctx.trace_id
        with pytest.raises(RuntimeError, match="already entered"), ctx:
            pass
    assert invalid(c) == 2
    with pytest.raises(ValueError, match="agent_name"):
        MetricsContext("op", "", collector=c)


# --- Mutable Core ----------------------------------------------------------------------------------------
def test_track_state_operation_seed_example(c: MetricsCollector) -> None:
    """The seed's update_state() observes state_write_latency_ms{operation="write", agent}."""
    track = functools.partial(track_state_operation, collector=c)

    class StateManager:
        def __init__(self) -> None:
            self.state: dict[tuple[str, str], Any] = {}

        def update_state(self, agent: str, key: str, value: Any) -> None:
            start = time.time()
            self.state[(agent, key)] = value
            latency_ms = (time.time() - start) * 1000
            track("write", agent, latency_ms)

    StateManager().update_state("Kenny", "position", 3)
    assert count(c, "state_write_latency_ms", operation="write", agent="Kenny") == 1


def test_track_state_operation_drops_bad_values(c: MetricsCollector) -> None:
    """A NaN latency is dropped and counted in ark_obs_dropped_total, never raised."""
    track_state_operation("write", "Kenny", math.nan, collector=c)
    assert count(c, "state_write_latency_ms") == 0
    assert value(c, "ark_obs_dropped_total", metric="state_write_latency_ms", reason="non_finite") == 1
