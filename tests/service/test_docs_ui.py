"""``/docs`` works offline: Swagger UI comes from the installed package, never from a CDN."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from ark_obs.service import create_app
from ark_obs.settings import Settings
from plugins.browser import headless
from plugins.net import free_port

EXTERNAL = re.compile(r"""(?i)(?:src|href|url)\s*[=:]\s*["']?\s*(?:https?:)?//""")


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    port = free_port()
    app = create_app(Settings(port=port, _env_file=None))  # type: ignore[call-arg]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(10)


def test_docs_page_references_no_external_host(service: str) -> None:
    """/docs names no external host (no CDN script or style, no validator badge), and each asset it names is
    served by the service itself; /redoc, CDN-only, is not offered."""
    page = httpx.get(service + "/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert not EXTERNAL.search(page.text), EXTERNAL.search(page.text)
    assert '"validatorUrl": null' in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert {a.rsplit("/", 1)[-1] for a in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    for asset in assets:
        assert asset.startswith("/docs/assets/"), asset
        got = httpx.get(service + asset)
        assert got.status_code == 200 and len(got.content) > 500, asset
    assert httpx.get(service + "/redoc").status_code == 404


def test_docs_render_in_a_browser_without_network(service: str, tmp_path: Path) -> None:
    """Headless Chromium, with every host but the service unresolvable, renders the operations of /docs."""
    result = headless(service + "/docs", tmp_path / "profile", "--dump-dom",
                      "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")  # fmt: skip
    assert result.returncode == 0 and "</html>" in result.stdout, result.stderr[-2000:]
    dom = result.stdout
    assert 'class="swagger-ui' in dom
    for path in ("/metrics", "/slos", "/traces/{trace_id}/spans"):
        assert re.search(rf'data-path="{re.escape(path)}"', dom), path
