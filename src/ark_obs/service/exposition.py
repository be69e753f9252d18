"""What ``/metrics`` and ``/metrics/json`` serve: content negotiation, the (restricted) exposition, JSON families.

>>> wants_openmetrics("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.4")
True
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Sequence
from typing import Any, Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from ark_obs.service.api import ExemplarOut, FamilyOut, NonFinite, SampleOut
from ark_obs.service.openmetrics import generate_openmetrics

__all__ = [
    "CONTENT_TYPE_PLAIN_0_0_4",
    "GZIP_LEVEL",
    "OPENMETRICS_CONTENT_TYPE",
    "accepts_gzip",
    "families_json",
    "render_exposition",
    "wants_openmetrics",
]

OPENMETRICS_CONTENT_TYPE: Final = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# Level 6 (zlib's default): most of level 9's ratio on exposition text at a fraction of its cost.
GZIP_LEVEL: Final = 6


# --- /metrics negotiation -----------------------------------------------------------------------------
def _media_params(part: str) -> tuple[str, dict[str, str]]:
    media, *raw = part.split(";")
    params: dict[str, str] = {}
    for p in raw:
        key, sep, value = p.partition("=")
        if sep:
            params[key.strip().lower()] = value.strip().strip('"')
    return media.strip().lower(), params


def _quality(params: dict[str, str]) -> float:
    try:
        q = float(params.get("q", "1"))
    except ValueError:
        return 0.0
    return q if 0.0 <= q <= 1.0 else 0.0


def wants_openmetrics(accept: str | None) -> bool:
    """True when ``Accept`` asks for OpenMetrics 1.0.0; anything else (garbage too) gets text 0.0.4.

    prometheus_client's ``choose_encoder`` raises on a non-numeric version: client input must not 500.
    """
    if not accept:
        return False
    for part in accept.split(","):
        media, params = _media_params(part)
        if (
            media == "application/openmetrics-text"
            and _quality(params) > 0
            and params.get("version", "1.0.0") in ("1.0.0", "")
        ):
            return True
    return False


def accepts_gzip(accept_encoding: str | None) -> bool:
    """True when ``Accept-Encoding`` allows gzip (``gzip;q=0`` refuses it)."""
    if not accept_encoding:
        return False
    for part in accept_encoding.split(","):
        coding, params = _media_params(part)
        if coding in ("gzip", "*") and _quality(params) > 0:
            return True
    return False


# prometheus_client's name[] filter matches sample names; these make a family name select all its samples.
_SAMPLE_SUFFIXES: Final = ("_bucket", "_sum", "_count", "_created", "_total", "_info", "_gcount", "_gsum")


def render_exposition(
    registry: CollectorRegistry, openmetrics_format: bool, names: Sequence[str], gzip_level: int | None = None
) -> bytes:
    """The exposition of ``registry``, restricted to ``names`` (family or sample names) when given.

    ``gzip_level``: compress in the same worker-thread call (one hop off the event loop, not two).
    """
    source: Any = registry
    if names:
        wanted = {*names, *(n + suffix for n in names for suffix in _SAMPLE_SUFFIXES)}
        source = registry.restricted_registry(wanted)
    body = generate_openmetrics(source) if openmetrics_format else bytes(generate_latest(source))
    return body if gzip_level is None else gzip.compress(body, gzip_level)


# --- /metrics/json --------------------------------------------------------------------------------
def _json_value(value: float) -> float | NonFinite:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def families_json(registry: CollectorRegistry) -> list[FamilyOut]:
    """Every family ``registry`` collects, as response models."""
    out: list[FamilyOut] = []
    for family in registry.collect():
        samples = []
        for s in family.samples:
            ex = s.exemplar
            samples.append(
                SampleOut(
                    name=s.name,
                    labels=dict(s.labels),
                    value=_json_value(s.value),
                    timestamp=float(s.timestamp) if isinstance(s.timestamp, float | int) else None,
                    exemplar=None
                    if ex is None
                    else ExemplarOut(
                        labels=dict(ex.labels),
                        value=_json_value(ex.value),
                        timestamp=None if ex.timestamp is None else float(ex.timestamp),
                    ),
                )
            )
        out.append(
            FamilyOut(name=family.name, type=family.type, help=family.documentation, unit=family.unit, samples=samples)
        )
    return out
