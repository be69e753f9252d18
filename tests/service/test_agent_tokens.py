"""Tokens bound to agents (ARK_OBS_INGEST_TOKENS): a write for another agent is 403 and counted, over
every write route and OTLP in both encodings; the shared token still writes for any agent; the tokens
are validated and never shown."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from ark_obs import cli
from ark_obs.service import create_app
from ark_obs.settings import Settings, parse_bound_tokens

SHARED = "shared-token-0123456789"
KYLE_JOEY = "kyle-joey-token-0123456789"
WATCHDOG = "watchdog-token-0123456789:x"  # a token may hold ':' (only the first one separates)
GATEWAY = "gateway-token-0123456789"
BOUND = f"Kyle,Joey:{KYLE_JOEY}\n  Watchdog:{WATCHDOG} *:{GATEWAY}"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(Settings(_env_file=None, ingest_token=SHARED, ingest_tokens=BOUND))  # type: ignore[call-arg]
    with TestClient(app) as c:
        yield c


def _refused(client: TestClient, reason: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "ark_obs_requests_refused_total" and sample.labels.get("reason") == reason:
                return float(sample.value)
    return 0.0


def _otlp(agent: str, trace: bytes) -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    attr = rs.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", agent
    span = rs.scope_spans.add().spans.add()
    span.trace_id, span.start_time_unix_nano, span.end_time_unix_nano = trace, time.time_ns(), time.time_ns()
    return bytes(request.SerializeToString())


def test_a_bound_token_writes_only_for_its_agents(client: TestClient) -> None:
    """Spans, batches and heartbeats for the token's agents land; for any other agent 403, nothing stored."""
    trace = "c1" * 16
    kj = _auth(KYLE_JOEY)
    assert client.post(f"/traces/{trace}/spans", json={"agent": "Kyle"}, headers=kj).status_code == 200
    assert client.post(f"/traces/{trace}/spans", json={"agent": "HRM"}, headers=kj).status_code == 403
    parent = {**kj, "traceparent": f"00-{trace}-{'1' * 16}-01"}
    assert client.post("/traceparent/spans", json={"agent": "Kenny"}, headers=parent).status_code == 403
    # a batch with one foreign span is refused whole: the Joey span of it is not stored either
    batch = {"spans": [{"trace_id": trace, "agent": "Joey"}, {"trace_id": trace, "agent": "Aletheia"}]}
    r = client.post("/spans", json=batch, headers=kj)
    assert r.status_code == 403 and "Aletheia" in r.json()["detail"] and KYLE_JOEY not in r.text
    assert client.get(f"/traces/{trace}").json()["agents_seen"] == ["Kyle"]
    assert client.post("/heartbeats/Joey", headers=kj).status_code == 200
    assert client.post("/heartbeats/Watchdog", headers=kj).status_code == 403
    assert client.post("/heartbeats/Watchdog", headers=_auth(WATCHDOG)).status_code == 200
    assert client.post("/heartbeats/Kyle", headers=_auth(WATCHDOG)).status_code == 403
    assert _refused(client, "forbidden") == 5


def test_the_shared_token_and_a_star_token_write_for_any_agent(client: TestClient) -> None:
    """INGEST_TOKEN stays the any-agent token; a '*' entry too; a wrong token is still 401."""
    trace = "c2" * 16
    for token, agent in ((SHARED, "HRM"), (GATEWAY, "Aletheia")):
        assert client.post(f"/traces/{trace}/spans", json={"agent": agent}, headers=_auth(token)).status_code == 200
    assert client.post("/heartbeats/Kyle", headers=_auth("not-a-token-0123456789")).status_code == 401
    assert client.post("/heartbeats/Kyle").status_code == 401


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_otlp_spans_for_another_agent_are_403(client: TestClient, encoding: str) -> None:
    """An OTLP export whose service.name (or ark.agent) the token is not bound to: 403 in the request's
    encoding, nothing stored; the token's own agent lands."""
    trace = bytes(range(1, 17)) if encoding == "protobuf" else bytes(range(2, 18))

    def post(agent: str, token: str) -> int:
        if encoding == "protobuf":
            body, kind = _otlp(agent, trace), "application/x-protobuf"
        else:
            now = str(time.time_ns())
            span = {"traceId": trace.hex(), "startTimeUnixNano": now, "endTimeUnixNano": now}
            resource = {"attributes": [{"key": "service.name", "value": {"stringValue": agent}}]}
            doc = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": [span]}]}]}
            body, kind = json.dumps(doc).encode(), "application/json"
        r = client.post("/v1/traces", content=body, headers={**_auth(token), "Content-Type": kind})
        assert r.headers["content-type"] == kind
        return r.status_code

    assert post("HRM", KYLE_JOEY) == 403
    assert post("Kyle", KYLE_JOEY) == 200
    assert client.get(f"/traces/{trace.hex()}").json()["agents_seen"] == ["Kyle"]
    assert _refused(client, "forbidden") == 1


@pytest.mark.parametrize(
    "value",
    [
        "Kyle:short",  # a token under 16 characters
        "Kyle,Joey",  # no colon
        ":token-0123456789abcdef",  # no agents
        "not a name!:token-0123456789abcdef",
        "Kyle:token-0123456789abcdef Joey:token-0123456789abcdef",  # one token twice
        "   ",
    ],
)
def test_bad_bindings_are_refused_without_showing_a_token(value: str) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(_env_file=None, ingest_tokens=value)  # type: ignore[call-arg]
    assert "token-0123456789abcdef" not in str(err.value) and "short" not in str(err.value)


def test_bindings_parse_and_the_shared_token_may_not_be_bound() -> None:
    assert parse_bound_tokens(BOUND) == {
        KYLE_JOEY: frozenset({"Kyle", "Joey"}),
        WATCHDOG: frozenset({"Watchdog"}),
        GATEWAY: None,
    }
    problems = Settings(_env_file=None, ingest_token=KYLE_JOEY, ingest_tokens=BOUND).problems()  # type: ignore[call-arg]
    assert [p.setting for p in problems] == ["ARK_OBS_INGEST_TOKENS"] and KYLE_JOEY not in str(problems[0])
    public = Settings(_env_file=None, host="0.0.0.0", ingest_tokens=BOUND).problems()  # type: ignore[call-arg]
    assert public == []  # bound tokens guard the writes as the shared one does


def test_check_config_shows_the_agents_not_the_tokens(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    monkeypatch.chdir(str(tmp_path))
    monkeypatch.setenv("ARK_OBS_INGEST_TOKENS", BOUND)
    assert cli.main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "ARK_OBS_INGEST_TOKENS=(set: 3 token(s), for Joey,Kyle; Watchdog; *)" in out
    assert all(token not in out for token in (KYLE_JOEY, WATCHDOG, GATEWAY))
