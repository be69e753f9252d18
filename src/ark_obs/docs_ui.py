"""``/docs`` without the internet: Swagger UI served from the assets the ``fastapi-offline`` package vendors.

FastAPI's default ``/docs`` page loads Swagger UI from a CDN and ``/redoc`` loads ReDoc from another,
so on an isolated host (where ark-obs often runs) both are blank. ``create_app`` turns both off and
calls ``mount`` instead: the assets (Swagger UI 5, which reads the OpenAPI 3.1 schema FastAPI writes)
come from the installed package under ``/docs/assets``, and the validator badge (an image Swagger UI
fetches from its authors' site) is off. Only the asset directory is used, not ``FastAPIOffline``, so
the app stays a plain ``FastAPI``.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS", "DOCS", "mount"]

DOCS: Final = "/docs"
ASSETS: Final = "/docs/assets"
_OAUTH2_REDIRECT: Final = "/docs/oauth2-redirect"
_STATIC: Final = resources.files("fastapi_offline") / "static"


def mount(app: FastAPI) -> None:
    """Serve Swagger UI for ``app.openapi_url`` at ``/docs``, every asset from this service."""
    app.mount(ASSETS, StaticFiles(directory=str(_STATIC)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
            oauth2_redirect_url=_OAUTH2_REDIRECT,
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(_OAUTH2_REDIRECT, include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
