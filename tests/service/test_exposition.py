"""What /metrics serves: Accept and Accept-Encoding negotiation, the name[] restriction, gzip."""

from __future__ import annotations

import gzip

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families as parse_text

from ark_obs.service.exposition import accepts_gzip, render_exposition, wants_openmetrics


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (None, False),
        ("text/plain", False),
        ("*/*", False),
        ("application/openmetrics-text", True),
        ("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.4", True),
        ("application/openmetrics-text; version=1.0.0; q=0", False),
        ("application/openmetrics-text; version=foo", False),  # prometheus_client's choose_encoder raises here
        ("application/openmetrics-text; version=2.0.0", False),
        ("application/openmetrics-text; q=abc", False),
        (";;;,,,=", False),
    ],
)
def test_accept_negotiation(accept: str | None, openmetrics: bool) -> None:
    """OpenMetrics only for an acceptable OpenMetrics 1.0.0; anything else, garbage too, falls back to text."""
    assert wants_openmetrics(accept) is openmetrics


@pytest.mark.parametrize(
    ("accept_encoding", "gzip_ok"),
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("GZIP", True),
        ("br, gzip;q=0.5", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip;q=0.0, identity", False),
        ("identity", False),
        ("gzip;q=bogus", False),
    ],
)
def test_gzip_negotiation(accept_encoding: str | None, gzip_ok: bool) -> None:
    """gzip when Accept-Encoding allows it with a non-zero quality (``gzip;q=0`` refuses it)."""
    assert accepts_gzip(accept_encoding) is gzip_ok


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("events_total", "Events.", registry=registry).inc()
    Histogram("latency_ms", "Latency.", buckets=(1.0, 10.0), registry=registry).observe(5)
    Counter("other_total", "Other.", registry=registry).inc()
    return registry


def test_family_names_select_every_sample() -> None:
    """A family name in name[] selects the whole family (buckets, sum, count), not just a sample named so."""
    text = render_exposition(_registry(), False, ["latency_ms", "events"]).decode()
    names = {s.name for f in parse_text(text) for s in f.samples}
    assert {"latency_ms_bucket", "latency_ms_sum", "latency_ms_count", "events_total"} <= names
    assert "other_total" not in names


def test_sample_names_select_those_samples() -> None:
    """A sample name in name[] selects just those samples, as prometheus_client's filter does."""
    text = render_exposition(_registry(), False, ["latency_ms_count"]).decode()
    assert {s.name for f in parse_text(text) for s in f.samples} == {"latency_ms_count"}


def test_gzip_level_compresses_the_same_exposition() -> None:
    """With a gzip level the body is the same exposition, gzipped."""
    registry = _registry()
    plain = render_exposition(registry, True, [])
    assert plain.endswith(b"# EOF\n")
    assert gzip.decompress(render_exposition(registry, True, [], 6)) == plain
