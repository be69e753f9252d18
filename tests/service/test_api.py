"""The HTTP API's typed parameters: trace ids and traceparent headers exactly as ark_obs.context sees them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from ark_obs.context import is_valid_trace_id, parse_traceparent
from ark_obs.service.api import API_TRACE_ID_PATTERN, TRACEPARENT_PATTERN, TraceId, TraceParentTraceId

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
_TRACEPARENT = TypeAdapter(TraceParentTraceId)


_TRACE_ID = TypeAdapter(TraceId)


@given(
    st.one_of(
        st.from_regex(API_TRACE_ID_PATTERN, fullmatch=True),
        st.sampled_from(["0" * 32, "00000000-0000-0000-0000-000000000000", TRACE.upper(), TRACE[:-1], ""]),
        st.text(alphabet="0123456789abcdefABCDEF-", min_size=30, max_size=38),
    )
)
def test_api_trace_ids_are_the_context_module_s(candidate: str) -> None:
    """The HTTP API accepts exactly the trace ids ark_obs.context.is_valid_trace_id accepts, in either case
    (upper case is what RFC 4122 allows on input), and takes them in lower case."""
    try:
        taken = _TRACE_ID.validate_python(candidate)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted is is_valid_trace_id(candidate.lower())
    if accepted:
        assert taken == candidate.lower()


@given(
    st.one_of(
        st.from_regex(TRACEPARENT_PATTERN, fullmatch=True),
        st.sampled_from(
            [
                f"00-{TRACE}-00f067aa0ba902b7-01",
                f"ff-{TRACE}-00f067aa0ba902b7-01",
                f"00-{'0' * 32}-00f067aa0ba902b7-01",
                f"00-{TRACE}-{'0' * 16}-01",
                f"00-{TRACE}-00f067aa0ba902b7-01-extra",
                f"01-{TRACE}-00f067aa0ba902b7-01-extra",
            ]
        ),
    )
)
def test_api_traceparents_are_the_context_module_s(candidate: str) -> None:
    """The traceparent header parameter accepts exactly what parse_traceparent accepts, as its trace id."""
    parsed = parse_traceparent(candidate)
    try:
        trace_id = _TRACEPARENT.validate_python(candidate)
    except ValidationError:
        assert parsed is None
    else:
        assert parsed is not None and trace_id == parsed.trace_id
