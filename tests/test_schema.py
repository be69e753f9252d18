"""schemathesis over the app's OpenAPI schema: no input makes a 5xx or a response that breaks the schema.

Bounded (a few dozen examples per operation, a couple of thousand requests in all) so it runs in
well under a minute; both the open app and one with an ingest token are explored.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.config._checks import (
    NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES,
    POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES,
)

from ark_obs.app import create_app
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


@open_schema.parametrize()
@BOUNDED
def test_open_app_conforms(case: Any) -> None:
    """Every generated request to the open app gets a documented, schema-valid, non-5xx answer."""
    case.call_and_validate()


@guarded_schema.parametrize()
@BOUNDED
def test_guarded_app_conforms(case: Any) -> None:
    """With a token set, unauthenticated writes are refused with 401 and everything else conforms."""
    case.call_and_validate()


@guarded_schema.parametrize()
@BOUNDED
def test_guarded_app_with_token_conforms(case: Any) -> None:
    """With the right token, writes get past auth and still never 5xx or break the schema."""
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"})


def test_schema_is_valid_openapi() -> None:
    """The schema lists every endpoint and carries this app's batch limit."""
    schema = _open.openapi()
    assert schema["components"]["schemas"]["SpanBatch"]["properties"]["spans"]["maxItems"] == 20
    paths = set(schema["paths"])
    assert paths == {
        "/",
        "/status.json",
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
        "/v1/traces",
    }


@pytest.fixture(autouse=True, scope="module")
def _close_apps() -> Any:
    """Stop the apps' background threads when the module is done."""
    yield
    for app in (_open, _guarded):
        for owned in app.state.service.owned:
            owned.close()
