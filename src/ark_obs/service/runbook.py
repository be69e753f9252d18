"""The runbook at ``GET /runbook``: the packaged ``static/runbook.md`` rendered to one self-contained HTML page.

>>> anchors(runbook_markdown())[:2]
['arkslobudgetburnpage', 'arkslobudgetburnticket']

Each ``##`` section's anchor is its title lowercased, spaces as ``-`` and anything else but letters and
digits dropped, so an alert's section is ``#<alertname lowercased>``: the anchor the alerts' ``runbook_url``
(``ARK_OBS_RUNBOOK_URL#...``) and the status page's links name. Raw HTML in the markdown is not rendered.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache
from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, PlainTextResponse
from markdown_it import MarkdownIt

__all__ = ["anchor", "anchors", "render", "router", "runbook_markdown"]

_STYLE = """
body { margin: 0 auto; max-width: 860px; padding: 16px 24px 48px; background: #0f1419; color: #e6edf3;
       font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
a { color: #58a6ff; } code { background: #171d24; padding: 1px 4px; border-radius: 4px; font-size: 13px; }
pre { background: #171d24; padding: 10px; overflow-x: auto; }
h2 { border-top: 1px solid #263040; padding-top: 14px; margin-top: 28px; }
h2:target { color: #d29922; }
nav { columns: 2; font-size: 13px; }
"""


def anchor(title: str) -> str:
    """``"ArkAgentSilent"`` -> ``"arkagentsilent"``; ``"Trace store unavailable"`` -> ``"trace-store-unavailable"``."""
    return re.sub(r"[^a-z0-9\-]", "", title.strip().lower().replace(" ", "-"))


@lru_cache(maxsize=1)
def runbook_markdown() -> str:
    """The runbook's markdown, read once from the package."""
    return resources.files("ark_obs.service").joinpath("static/runbook.md").read_text(encoding="utf-8")


def anchors(markdown: str) -> list[str]:
    """The anchors of the ``##`` sections, in order."""
    return [anchor(m.group(1)) for m in re.finditer(r"^## (.+)$", markdown, re.M)]


@lru_cache(maxsize=1)
def render() -> str:
    """The runbook as one HTML page: sections with ids, a table of contents, inline style only."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(runbook_markdown())
    toc = []
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag == "h2":
            title = tokens[i + 1].content
            token.attrSet("id", anchor(title))
            toc.append(f'<a href="#{anchor(title)}">{html.escape(title)}</a>')
    body = md.renderer.render(tokens, md.options, {})
    nav = "<nav>" + "<br>".join(toc) + "</nav>"
    first = body.index("</h1>") + len("</h1>") if "</h1>" in body else 0
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>ARK runbook · ark-obs</title><style>{_STYLE}</style></head><body>"
        f'<p><a href="/">← status page</a></p>{body[:first]}{nav}{body[first:]}</body></html>'
    )


def router() -> APIRouter:
    """``GET /runbook`` (HTML) and ``GET /runbook.md`` (the markdown)."""
    api = APIRouter(tags=["status page"])

    @api.get("/runbook", response_class=HTMLResponse, summary="Runbook")
    async def page() -> Any:
        """What to do for each alert and each red or amber state of the status page; a section per alert."""
        return HTMLResponse(render())

    @api.get(
        "/runbook.md",
        response_class=PlainTextResponse,
        summary="Runbook (markdown)",
        responses={200: {"content": {"text/markdown": {"schema": {"type": "string"}}}}},
    )
    async def markdown() -> Any:
        """The runbook's markdown source."""
        return PlainTextResponse(runbook_markdown(), media_type="text/markdown; charset=utf-8")

    return api
