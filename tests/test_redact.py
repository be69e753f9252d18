"""Credentials never leave the process: a secret inside an error message from Redis or Prometheus is masked."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from ark_obs._redact import scrub
from ark_obs.canary.prometheus import PrometheusClient, PrometheusError
from ark_obs.traces.model import StoreUnavailable
from ark_obs.traces.redis_store import RedisStore, StreamDepths, make_client
from plugins.net import free_port

SECRET = "s3cret-pw-4x"


def echoing(*args: Any, **kw: Any) -> Any:
    """A Redis call failing with an error text that repeats the password (redis-py shows its own errors by
    category only; an OSError from the socket layer shows its text)."""
    raise OSError(f"AUTH {SECRET} refused by the proxy")


def test_scrub_masks_the_url_credentials_and_given_secrets() -> None:
    """``scrub``: the URL's password, user information and token-like query values, and each given secret."""
    url = f"redis://user:{SECRET}@10.0.0.5:6379/0?api_token=t0ken-t0ken"
    text = f"connect {url} failed: AUTH {SECRET}; token t0ken-t0ken; extra xyzw-extra"
    out = scrub(text, url, secrets=["xyzw-extra", None, "ab"])
    assert SECRET not in out and "t0ken-t0ken" not in out and "xyzw-extra" not in out
    assert out.count("***") >= 4 and "10.0.0.5:6379" in out


def test_redis_store_failure_detail_masks_the_client_password(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A store built on a client (no URL to learn from) whose error echoes its password: the /readyz detail,
    the StoreUnavailable text and the log line all read ***."""
    client = make_client(f"redis://:{SECRET}@127.0.0.1:{free_port()}/0", 0.25)
    store = RedisStore(client)
    try:
        monkeypatch.setattr(client, "zcard", echoing)
        with caplog.at_level(logging.WARNING), pytest.raises(StoreUnavailable) as raised:
            store.in_flight()
        for text in (str(raised.value), store.health().detail, caplog.text):
            assert SECRET not in text and "***" in text, text
    finally:
        store.close()


def test_stream_depth_error_log_masks_the_client_password(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The stream-depth reader logs a failing read once: without the password the error text carries."""
    depths = StreamDepths.from_url(f"redis://:{SECRET}@127.0.0.1:{free_port()}/0", ("ark:signals",), timeout=0.25)
    try:
        pipeline = type("Pipeline", (), {"xlen": lambda self, stream: None, "execute": echoing})
        monkeypatch.setattr(depths.client, "pipeline", lambda **kw: pipeline())
        with caplog.at_level(logging.WARNING):
            assert depths.read() is None
        assert "could not read Redis stream lengths" in caplog.text
        assert SECRET not in caplog.text and "***" in caplog.text
    finally:
        depths.close()


@pytest.mark.parametrize("failure", ["error answer", "transport error"])
async def test_prometheus_error_text_masks_the_url_credentials(failure: str) -> None:
    """Prometheus (or what stands in its place) answers an error that repeats the URL's password, or the
    connection fails with a message naming the URL: PrometheusError shows ***."""
    url = f"http://ark:{SECRET}@127.0.0.1:9/prom"

    def answer(request: httpx.Request) -> httpx.Response:
        if failure == "transport error":
            raise httpx.ConnectError(f"could not connect to {url} (password {SECRET})", request=request)
        return httpx.Response(400, json={"status": "error", "error": f"bad_data: user ark:{SECRET} not allowed"})

    async with PrometheusClient(url, 1.0, transport=httpx.MockTransport(answer)) as prom:
        with pytest.raises(PrometheusError) as raised:
            await prom.query("up")
    assert SECRET not in str(raised.value) and "***" in str(raised.value), str(raised.value)
