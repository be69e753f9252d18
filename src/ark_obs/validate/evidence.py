"""Evidence readers: ark-obs' own endpoints, Prometheus' HTTP API and Alertmanager's.

Each read either returns what the source says or raises ``EvidenceUnavailable`` (unreachable, an
error status, an answer that is not what the API documents): a step that cannot read its evidence is
inconclusive, never failed or passed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["AlertmanagerReader", "ArkObsReader", "EvidenceUnavailable", "PrometheusReader"]


class EvidenceUnavailable(Exception):
    """A source could not be read; the message says which and why."""


async def _get(client: httpx.AsyncClient, url: str, **params: str) -> httpx.Response:
    try:
        response = await client.get(url, params=params or None)
    except httpx.HTTPError as exc:
        raise EvidenceUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code >= 400:
        raise EvidenceUnavailable(f"{url}: HTTP {response.status_code}")
    return response


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise EvidenceUnavailable(f"{response.request.url}: not JSON") from exc


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


class ArkObsReader:
    """Reads ark-obs: ``/metrics`` (counters, ``ark_agent_up``), ``/slos``, ``/traces/{id}``."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")

    async def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Every sample called ``name`` on /metrics, with its labels."""
        response = await _get(self.client, f"{self.base_url}/metrics")
        try:
            families = list(text_string_to_metric_families(response.text))
        except ValueError as exc:
            raise EvidenceUnavailable(f"{self.base_url}/metrics: unparsable exposition ({exc})") from exc
        return [(dict(s.labels), float(s.value)) for f in families for s in f.samples if s.name == name]

    async def counter(self, name: str, labels: Mapping[str, str]) -> float:
        """The sum of the counter's series whose labels include ``labels`` (0 when none exists yet)."""
        sample = name if name.endswith("_total") else f"{name}_total"
        return sum(v for lbl, v in await self.samples(sample) if _matches(lbl, labels))

    async def agent_up(self, agent: str) -> bool | None:
        """``ark_agent_up{agent}``: True, False, or None when ark-obs does not know the agent."""
        values = [v for lbl, v in await self.samples("ark_agent_up") if lbl.get("agent") == agent]
        return None if not values else values[0] == 1.0

    async def heartbeat_interval(self) -> float:
        """The heartbeat interval ark-obs expects (``ark_agent_heartbeat_interval_seconds``)."""
        values = [v for _, v in await self.samples("ark_agent_heartbeat_interval_seconds")]
        if not values:
            raise EvidenceUnavailable(f"{self.base_url}/metrics has no ark_agent_heartbeat_interval_seconds")
        return values[0]

    async def slos(self) -> list[dict[str, Any]]:
        """The SLOs of ``GET /slos`` (name, status, value, objective)."""
        body = _json(await _get(self.client, f"{self.base_url}/slos"))
        if not isinstance(body, dict) or not isinstance(body.get("slos"), list):
            raise EvidenceUnavailable(f"{self.base_url}/slos: no 'slos' list")
        slos: list[dict[str, Any]] = body["slos"]
        return slos

    async def trace(self, trace_id: str) -> dict[str, Any]:
        """``GET /traces/{id}``: status, missing_agents, agents_seen."""
        try:
            response = await self.client.get(f"{self.base_url}/traces/{trace_id}")
        except httpx.HTTPError as exc:
            raise EvidenceUnavailable(f"{self.base_url}/traces/{trace_id}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 404:
            return {"status": "unknown", "missing_agents": [], "agents_seen": []}
        if response.status_code >= 400:
            raise EvidenceUnavailable(f"{self.base_url}/traces/{trace_id}: HTTP {response.status_code}")
        body = _json(response)
        if not isinstance(body, dict):
            raise EvidenceUnavailable(f"{self.base_url}/traces/{trace_id}: not an object")
        return body


class PrometheusReader:
    """Reads Prometheus: instant queries and the alerts it evaluates."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector of ``promql`` (``/api/v1/query``); a query Prometheus rejects is unavailable evidence."""
        body = _json(await _get(self.client, f"{self.base_url}/api/v1/query", query=promql))
        if body.get("status") != "success":
            raise EvidenceUnavailable(f"Prometheus rejected {promql!r}: {body.get('error')}")
        result = body["data"]["result"]
        return result if isinstance(result, list) else [result]

    async def alerts(self) -> list[dict[str, Any]]:
        """``/api/v1/alerts``: every pending and firing alert."""
        body = _json(await _get(self.client, f"{self.base_url}/api/v1/alerts"))
        if body.get("status") != "success":
            raise EvidenceUnavailable(f"{self.base_url}/api/v1/alerts: {body.get('error')}")
        alerts: list[dict[str, Any]] = body["data"]["alerts"]
        return alerts

    async def alert_state(self, alertname: str, labels: Mapping[str, str]) -> str | None:
        """``firing``, ``pending`` or None for the matching alert."""
        states = [
            a.get("state")
            for a in await self.alerts()
            if _matches(a.get("labels", {}), {"alertname": alertname, **labels})
        ]
        return "firing" if "firing" in states else states[0] if states else None


class AlertmanagerReader:
    """Reads Alertmanager: the alerts it has received and holds active."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")

    async def received(self, alertname: str, labels: Mapping[str, str]) -> dict[str, Any] | None:
        """The first active alert ``alertname`` with ``labels`` (``/api/v2/alerts``), or None."""
        body = _json(await _get(self.client, f"{self.base_url}/api/v2/alerts", active="true"))
        if not isinstance(body, list):
            raise EvidenceUnavailable(f"{self.base_url}/api/v2/alerts: not a list")
        wanted = {"alertname": alertname, **labels}
        return next((a for a in body if _matches(a.get("labels", {}), wanted)), None)
