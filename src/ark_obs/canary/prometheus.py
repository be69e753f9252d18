"""A small async client for Prometheus' HTTP query API, and ``PrometheusError`` for every way a query fails."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import httpx

from ark_obs._redact import redact_url, scrub

__all__ = ["Matrix", "PrometheusClient", "PrometheusError", "Vector"]


class PrometheusError(Exception):
    """Prometheus did not answer a query: unreachable, too slow, an error, or not Prometheus at all."""


Vector = list[tuple[dict[str, str], float]]
Matrix = list[tuple[dict[str, str], list[tuple[float, float]]]]


def _number(text: object) -> float:
    # Prometheus sends values as strings, non-finite ones as "NaN", "+Inf", "-Inf"
    try:
        return float(str(text))
    except ValueError:
        return math.nan


class PrometheusClient:
    """A small async client for Prometheus' HTTP query API (``/api/v1/query``, ``/api/v1/query_range``)."""

    def __init__(self, url: str, timeout: float, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.shown = redact_url(self.url)  # what messages name: no credential
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=httpx.Timeout(timeout), transport=transport, follow_redirects=False
        )

    async def __aenter__(self) -> PrometheusClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def _api(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        try:
            # POST keeps long PromQL out of the URL; both endpoints accept form-encoded POSTs.
            response = await self._http.post(path, data=dict(params))
        except httpx.TimeoutException as exc:
            raise PrometheusError(f"no answer from {self.shown} within the timeout ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            why = scrub(str(exc) or type(exc).__name__, self.url)
            raise PrometheusError(f"{self.shown} is unreachable: {why}") from None
        try:
            body = response.json()
        except ValueError:
            raise PrometheusError(
                f"{self.shown}{path} answered HTTP {response.status_code} without JSON: is this Prometheus?"
            ) from None
        if not isinstance(body, dict) or body.get("status") != "success" or not isinstance(body.get("data"), dict):
            error = body.get("error") if isinstance(body, dict) else None
            why = scrub(str(error or "not a Prometheus API answer"), self.url)
            raise PrometheusError(f"HTTP {response.status_code}: {why}")
        data: dict[str, Any] = body["data"]
        return data

    async def query(self, expr: str, at: float | None = None) -> Vector:
        """An instant query: ``[(labels, value), ...]``; a scalar answer is one sample without labels."""
        params = {"query": expr} if at is None else {"query": expr, "time": repr(at)}
        data = await self._api("/api/v1/query", params)
        kind, result = data.get("resultType"), data.get("result")
        if not isinstance(result, list):
            raise PrometheusError(f"malformed answer to {expr!r}: no result list")
        try:
            if kind == "vector":
                return [(dict(s["metric"]), _number(s["value"][1])) for s in result]
            if kind == "scalar":
                return [({}, _number(result[1]))]
        except (KeyError, IndexError, TypeError) as exc:
            raise PrometheusError(f"malformed answer to {expr!r}: {exc!r}") from exc
        raise PrometheusError(f"{expr!r} returned a {kind}, not an instant vector")

    async def query_range(self, expr: str, start: float, end: float, step: float) -> Matrix:
        """A range query: ``[(labels, [(timestamp, value), ...]), ...]``."""
        params = {"query": expr, "start": repr(start), "end": repr(end), "step": repr(step)}
        data = await self._api("/api/v1/query_range", params)
        if data.get("resultType") != "matrix":
            raise PrometheusError(f"{expr!r} returned a {data.get('resultType')}, not a range")
        try:
            return [(dict(s["metric"]), [(float(t), _number(v)) for t, v in s["values"]]) for s in data["result"]]
        except (KeyError, ValueError, TypeError) as exc:
            raise PrometheusError(f"malformed answer to {expr!r}: {exc!r}") from exc

    async def time(self) -> float:
        """Prometheus' clock: every query of one analysis is evaluated at this instant."""
        samples = await self.query("time()")
        if not samples or not math.isfinite(samples[0][1]):
            raise PrometheusError("time() returned nothing")
        return samples[0][1]
