"""Recording and windowed-stats cost of ark-obs next to the raw prometheus_client and the seed-style baseline."""

from __future__ import annotations

import contextvars
import gc
import random
import resource
import tracemalloc
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from ark_obs.catalog import LATENCY_BUCKETS_MS
from ark_obs.context import TRACE_ID
from ark_obs.metrics import MetricsCollector
from bench._timing import interleaved_ns, per_call_ns, row, sized
from bench.seed_baseline import SeedStyleCollector

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _recording() -> list[dict[str, Any]]:
    ark = MetricsCollector(ticker=False)
    seed = SeedStyleCollector()
    reg = CollectorRegistry()
    raw_counter = Counter("hrm_denials", "raw", ["rule_id", "agent"], registry=reg)
    raw_hist = Histogram("ark_pass_latency_ms", "raw", buckets=LATENCY_BUCKETS_MS, registry=reg)
    raw_child = raw_counter.labels("max_position_size", "Kenny")
    ark_child = ark.metric("hrm_denials_total").labels("max_position_size", "Kenny")
    ark_hist = ark.metric("ark_pass_latency_ms")
    labels = {"rule_id": "max_position_size", "agent": "Kenny"}
    # a context with the trace id bound, as an instrumented agent method has; ctx.run's own cost counts against us
    traced = contextvars.copy_context()
    traced.run(TRACE_ID.set, TRACE)

    def traced_observe() -> None:
        traced.run(ark_hist.observe, 285.3)

    t = interleaved_ns(
        {
            "raw_inc": raw_child.inc,
            "ark_inc": ark_child.inc,
            "raw_labels_inc": lambda: raw_counter.labels(**labels).inc(),
            "ark_by_name": lambda: ark.inc_counter("hrm_denials_total", labels=labels),
            "seed_by_name": lambda: seed.inc_counter("hrm_denials_total", labels=labels),
            "raw_observe": lambda: raw_hist.observe(285.3),
            "ark_observe": lambda: ark_hist.observe(285.3),
            "ark_by_name_observe": lambda: ark.observe_histogram("ark_pass_latency_ms", 285.3),
            "raw_observe_ex": lambda: raw_hist.observe(285.3, {"trace_id": TRACE}),
            "ark_observe_traced": traced_observe,
        }
    )
    seed_observe = per_call_ns(lambda: seed.observe_histogram("ark_pass_latency_ms", 285.3), number=20_000)
    raw_inc, raw_labels_inc, raw_observe = t["raw_inc"], t["raw_labels_inc"], t["raw_observe"]
    rows = [
        row("raw: counter child inc()", raw_inc, "ns"),
        row("ark: counter child inc()", t["ark_inc"], "ns", raw_inc, 1.2),
        row("raw: counter labels(**kw).inc()", raw_labels_inc, "ns"),
        row("ark: increment_counter(name, labels)", t["ark_by_name"], "ns", raw_labels_inc, 1.0),
        row("seed-style: inc_counter(name, labels)", t["seed_by_name"], "ns", raw_labels_inc),
        row("raw: histogram observe()", raw_observe, "ns"),
        row("ark: histogram observe()", t["ark_observe"], "ns", raw_observe, 1.2),
        row("ark: observe_histogram(name, v)", t["ark_by_name_observe"], "ns", raw_observe),
        row("raw: observe() with exemplar, every call", t["raw_observe_ex"], "ns", raw_observe),
        row(
            "ark: observe() with a bound trace id",
            t["ark_observe_traced"],
            "ns",
            raw_observe,
            1.5,
            "exemplar refreshed per bucket at most 1/s; includes a Context.run per call",
        ),
        row(
            "seed-style: observe_histogram(name, v)",
            seed_observe,
            "ns",
            raw_observe,
            note="keeps every observation: memory grows without bound",
        ),
    ]
    return rows


class _Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stats(n_small: int = 1_000, n_large: int = 1_000_000) -> list[dict[str, Any]]:
    rng = random.Random(7)
    values = [rng.lognormvariate(5.0, 0.5) for _ in range(n_large)]
    rows = []
    results: dict[tuple[str, int], float] = {}
    mem: dict[tuple[str, int], float] = {}
    collectors: dict[int, MetricsCollector] = {}
    for n in (n_small, n_large):
        # observations spread over the whole retention, one tick per slice, so both sizes query a full ring
        gc.collect()
        tracemalloc.start()
        clock = _Clock()
        ark = MetricsCollector(ticker=False, clock=clock)
        h = ark.metric("ark_pass_latency_ms")
        base = tracemalloc.get_traced_memory()[0]
        slices = ark.window.slot_count - 2
        per_slice = n // slices + 1
        for i in range(0, n, per_slice):
            for v in values[i : i + per_slice]:
                h.observe(v)
            clock.t += ark.window.slice
            ark.tick()
        mem[("ark", n)] = (tracemalloc.get_traced_memory()[0] - base) / 1024
        tracemalloc.stop()
        collectors[n] = ark

        gc.collect()
        tracemalloc.start()
        seed = SeedStyleCollector()
        base = tracemalloc.get_traced_memory()[0]
        for v in values[:n]:
            seed.observe_histogram("ark_pass_latency_ms", v)
        mem[("seed", n)] = (tracemalloc.get_traced_memory()[0] - base) / 1024
        tracemalloc.stop()
        results[("seed", n)] = per_call_ns(
            lambda c=seed: c.get_histogram_stats("ark_pass_latency_ms"), 3 if n == n_large else 100, 3
        )
    # both sizes queried in alternating batches, so drift on the machine hits them alike
    timed = interleaved_ns(
        {str(n): (lambda c=c: c.get_histogram_stats("ark_pass_latency_ms")) for n, c in collectors.items()},
        number=200,
        rounds=10,
    )
    for n in collectors:
        results[("ark", n)] = timed[str(n)]
    for who in ("ark", "seed"):
        label = "ark" if who == "ark" else "seed-style"
        small, large = results[(who, n_small)], results[(who, n_large)]
        rows.append(row(f"{label}: get_histogram_stats, {n_small:,} obs", small / 1e3, "µs"))
        rows.append(
            row(
                f"{label}: get_histogram_stats, {n_large:,} obs",
                large / 1e3,
                "µs",
                small / 1e3,
                2.0 if who == "ark" else None,
                "ratio = 1M / 1k",
            )
        )
        rows.append(row(f"{label}: memory held, {n_small:,} obs", mem[(who, n_small)], "KiB"))
        rows.append(
            row(
                f"{label}: memory held, {n_large:,} obs",
                mem[(who, n_large)],
                "KiB",
                mem[(who, n_small)],
                1.1 if who == "ark" else None,
                "tracemalloc, ratio = 1M / 1k",
            )
        )
    rows.append(row("process max RSS after both", _rss_mib(), "MiB"))
    return rows


def run() -> dict[str, Any]:
    """Recording paths and windowed stats, side by side with raw prometheus_client and the seed-style baseline."""
    return {
        "title": "metrics: recording and windowed stats",
        "rows": _recording() + _stats(*sized((1_000, 1_000_000), (100, 1_000))),
    }


if __name__ == "__main__":
    from bench.__main__ import show

    show(run())
