"""schemathesis over the app's OpenAPI schema: no input makes a 5xx or a response that breaks the schema.

Bounded (``ARK_OBS_SCHEMA_EXAMPLES`` examples per operation, 12 by default) so it runs in well under
a minute; both the open app and one with an ingest token are explored.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from referencing.exceptions import Unresolvable
from schemathesis.config import SchemathesisConfig
from schemathesis.config._checks import (
    NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES,
    POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES,
)

from ark_obs.service import create_app
from ark_obs.settings import Settings

TOKEN = "schemathesis-token-0123456789"
EXAMPLES = int(os.environ.get("ARK_OBS_SCHEMA_EXAMPLES", "12"))

# Small limits so generated bodies can cross them (413 must then be answered, not a 500).
_open = create_app(Settings(_env_file=None, max_batch_spans=20, max_body_bytes=8192))  # type: ignore[call-arg]
_guarded = create_app(Settings(_env_file=None, ingest_token=TOKEN))  # type: ignore[call-arg]

# 413 is the right answer to a batch over the schema's maxItems, and to a body over the byte limit,
# which OpenAPI cannot express: a schema-valid batch of 10,000 long spans can still be over 1 MiB.
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {"expected-statuses": [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]},
            "positive_data_acceptance": {"expected-statuses": [*POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES, "413"]},
        }
    }
)
open_schema = schemathesis.openapi.from_asgi("/openapi.json", _open, config=CONFIG)
guarded_schema = schemathesis.openapi.from_asgi("/openapi.json", _guarded, config=CONFIG)

BOUNDED = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


def _recent(span: Any) -> None:
    # Span times must lie within [now - trace TTL, now + clock skew] (else 422 implausible_time), which
    # OpenAPI cannot express: schema-valid numbers are moved into that window, schema-invalid ones kept.
    if not isinstance(span, dict):
        return
    at, duration = span.get("at"), span.get("duration_ms")
    if type(at) in (int, float) and 0 <= at <= 1e11:
        span["at"] = time.time() - 1
    if type(duration) in (int, float) and 0 <= duration <= 86_400_000:
        span["duration_ms"] = min(duration, 30_000)


def recent_times(case: Any) -> Any:
    """``case`` with its span times made recent (see ``_recent``)."""
    body = case.body
    if isinstance(body, dict):
        _recent(body)
        if isinstance(body.get("spans"), list):
            for span in body["spans"]:
                _recent(span)
    return case


@open_schema.parametrize()
@BOUNDED
def test_open_app_conforms(case: Any) -> None:
    """Every generated request to the open app gets a documented, schema-valid, non-5xx answer."""
    recent_times(case).call_and_validate()


@guarded_schema.parametrize()
@BOUNDED
def test_guarded_app_conforms(case: Any) -> None:
    """With a token set, unauthenticated writes are refused with 401 and everything else conforms."""
    recent_times(case).call_and_validate()


@guarded_schema.parametrize()
@BOUNDED
def test_guarded_app_with_token_conforms(case: Any) -> None:
    """With the right token, writes get past auth and still never 5xx or break the schema."""
    recent_times(case).call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"})


def test_schema_is_valid_openapi() -> None:
    """Both apps' schemas are valid OpenAPI 3.1 (openapi-spec-validator: structure, every $ref resolves,
    parameters, responses), list every endpoint, and carry the app's own batch limit."""
    for app in (_open, _guarded):
        schema = app.openapi()
        assert schema["openapi"].startswith("3.1.")
        validate(schema, cls=OpenAPIV31SpecValidator)  # raises on the first problem, naming it
    assert _open.openapi()["components"]["schemas"]["SpanBatch"]["properties"]["spans"]["maxItems"] == 20
    assert _guarded.openapi()["components"]["schemas"]["SpanBatch"]["properties"]["spans"]["maxItems"] == 10_000
    paths = set(_open.openapi()["paths"])
    assert paths == set(_guarded.openapi()["paths"])
    assert paths == {
        "/",
        "/status.json",
        "/runbook",
        "/runbook.md",
        "/metrics",
        "/metrics/json",
        "/healthz",
        "/readyz",
        "/slos",
        "/traces/{trace_id}",
        "/traces",
        "/traces/{trace_id}/spans",
        "/spans",
        "/traceparent/spans",
        "/heartbeats/{agent}",
        "/canary/analysis",
        "/state/anomalies",
        "/v1/traces",
    }


def test_schema_validator_catches_a_broken_schema() -> None:
    """The validator the test above relies on rejects a dangling $ref and a response without a description."""
    schema = copy.deepcopy(_open.openapi())
    ok = schema["paths"]["/slos"]["get"]["responses"]["200"]
    ok["content"]["application/json"]["schema"] = {"$ref": "#/components/schemas/NoSuchModel"}
    with pytest.raises(Unresolvable, match="NoSuchModel"):
        validate(schema, cls=OpenAPIV31SpecValidator)
    schema = copy.deepcopy(_open.openapi())
    del schema["paths"]["/healthz"]["get"]["responses"]["200"]["description"]
    with pytest.raises(OpenAPIValidationError, match="description"):
        validate(schema, cls=OpenAPIV31SpecValidator)


@pytest.fixture(autouse=True, scope="module")
def _close_apps() -> Any:
    """Stop the apps' background threads when the module is done."""
    yield
    for app in (_open, _guarded):
        for owned in app.state.service.owned:
            owned.close()
