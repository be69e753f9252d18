"""422 answers bounded whatever the input, and POST /spans' body read without stalling the event loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Annotated, Any, Final

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic.types import FailFast
from starlette.requests import ClientDisconnect

from ark_obs.service.api import BatchSpanIn, SpanBatch

__all__ = ["BODY_PARSE_ERROR", "MAX_VALIDATION_ERRORS", "read_batch", "validation_response"]


BODY_PARSE_ERROR: Final = "There was an error parsing the body"  # FastAPI's detail for a body json.loads refused
MAX_VALIDATION_ERRORS: Final = 20  # errors listed in a 422; "total" counts them all
MAX_ERROR_TEXT: Final = 200  # characters of one message or location part in a 422


def _short(value: object) -> object:
    if isinstance(value, str) and len(value) > MAX_ERROR_TEXT:
        return value[:MAX_ERROR_TEXT] + "..."
    return value


def validation_response(errors: Sequence[Any], total: int) -> JSONResponse:
    """The documented 422: ``{"detail": [{loc, msg, type}, ...], "total": n}``, bounded in size."""
    detail = [
        {
            "loc": [_short(part) for part in e.get("loc", ())][:16],
            "msg": _short(str(e.get("msg", ""))),
            "type": _short(str(e.get("type", ""))),
        }
        for e in errors
    ]
    return JSONResponse({"detail": detail, "total": total}, status_code=422)


VALIDATION_SLICE: Final = 500  # spans validated between two yields to the event loop


class _BoundedValidationError(RequestValidationError):
    """A RequestValidationError that lists some errors and knows how many there were in all."""

    def __init__(self, errors: Sequence[Any], total: int) -> None:
        super().__init__(errors)
        self.total = total


def _unreadable(why: str) -> _BoundedValidationError:
    return _BoundedValidationError([{"loc": ("body",), "msg": why, "type": "json_invalid"}], 1)


_SPAN_LIST: Final = TypeAdapter(list[BatchSpanIn])

# A body up to this size is parsed and validated in one call of pydantic's Rust JSON validator (about
# 1.3 ms for 1,000 spans, half of json.loads + validate_python; 256 KiB is about 3 ms, what json.loads
# alone costs for it). That call stops at the first error, so an invalid body costs no more than a
# valid one before it takes the careful path below.
FAST_VALIDATION_BYTES: Final = 256 * 1024


class _FastBatch(BaseModel):
    """SpanBatch as its fast path validates it: the same rules, stopping at the first error."""

    model_config = ConfigDict(extra="forbid", strict=True)

    spans: Annotated[list[BatchSpanIn], FailFast()]


async def read_batch(request: Request, max_spans: int) -> SpanBatch:
    """POST /spans' body as a SpanBatch; 413 past ``max_spans``, a bounded 422 when invalid.

    A valid body up to FAST_VALIDATION_BYTES is validated in one call (the common case: an agent's
    flush). Any other body takes the careful path: parsing and validating hold the GIL, so a worker
    thread would not spare the event loop; the JSON is parsed at once (about 10 ms a MiB) and the
    batch's size checked before any validation, then the spans are validated ``VALIDATION_SLICE`` at a
    time with a yield to the loop in between, so a megabyte of invalid spans never holds up /healthz.
    At most MAX_VALIDATION_ERRORS are kept. Either way a batch over ``max_spans`` is 413, never 422.
    """
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise _unreadable("the body must be application/json")
    try:
        body = await request.body()
    except ClientDisconnect:  # closed mid-body (by the client, or by the body deadline): nobody to answer
        raise HTTPException(400, "the client disconnected before sending the whole body") from None
    if len(body) <= FAST_VALIDATION_BYTES:
        try:
            fast = _FastBatch.model_validate_json(body)
        except ValidationError:
            pass  # errors are listed (bounded, 413 first) by the careful path
        else:
            if len(fast.spans) > max_spans:
                raise _too_many(len(fast.spans), max_spans)
            return SpanBatch.model_construct(spans=fast.spans)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # also not UTF-8, a 5,000-digit integer, deep nesting
        raise _unreadable(f"the body is not readable JSON: {type(exc).__name__}") from None
    spans = data.get("spans") if isinstance(data, dict) else None
    if not isinstance(spans, list):
        try:
            return SpanBatch.model_validate(data)  # the shape is wrong: its errors are few and cheap
        except ValidationError as exc:
            raise _bounded(exc) from None
    if len(spans) > max_spans:
        raise _too_many(len(spans), max_spans)
    errors: list[Any] = []
    total = 0
    try:
        SpanBatch.model_validate({**data, "spans": []})  # extra keys next to "spans"
    except ValidationError as exc:
        total += exc.error_count()
        errors += exc.errors(include_url=False, include_input=False, include_context=False)[:MAX_VALIDATION_ERRORS]
    valid: list[BatchSpanIn] = []
    for start in range(0, len(spans), VALIDATION_SLICE):
        if start:
            await asyncio.sleep(0)
        try:
            valid += _SPAN_LIST.validate_python(spans[start : start + VALIDATION_SLICE])
        except ValidationError as exc:
            total += exc.error_count()
            if len(errors) < MAX_VALIDATION_ERRORS:
                for e in exc.errors(include_url=False, include_input=False, include_context=False):
                    errors.append({**e, "loc": ("spans", start + int(e["loc"][0]), *e["loc"][1:])})
    if total:
        first = [{**e, "loc": ("body", *e["loc"])} for e in errors[:MAX_VALIDATION_ERRORS]]
        raise _BoundedValidationError(first, total)
    return SpanBatch.model_construct(spans=valid)


def _too_many(count: int, max_spans: int) -> HTTPException:
    return HTTPException(413, f"{count} spans in one batch; the limit is {max_spans}")


def _bounded(exc: ValidationError) -> _BoundedValidationError:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)[:MAX_VALIDATION_ERRORS]
    return _BoundedValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors], exc.error_count())
