"""`GET /schema`: the API reference as one self-contained HTML page.

Litestar's stock pages (Redoc, Swagger, Scalar) load their scripts and fonts from a CDN, so
on a machine without internet they render blank. This page is rendered on the server from
the same OpenAPI document (`/schema/openapi.json`), with inline CSS and no script at all:
what a reader needs is the operations, their parameters and body schemas.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from litestar import Request
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin

_METHODS = ("get", "post", "put", "patch", "delete")
_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#1d232a}
h1{margin-bottom:.2rem} .op{border:1px solid #d0d7de;border-radius:6px;margin:1rem 0;padding:.6rem 1rem}
.method{display:inline-block;min-width:4rem;font-weight:700;text-transform:uppercase}
.get{color:#116329}.post{color:#0550ae}.delete{color:#a40e26}
code,pre{font-family:ui-monospace,monospace;font-size:13px} pre{background:#f6f8fa;padding:.6rem;overflow:auto}
table{border-collapse:collapse} td,th{border-bottom:1px solid #eaeef2;padding:.2rem .6rem;text-align:left}
.muted{color:#57606a}
"""


def render_docs(schema: dict[str, Any], json_url: str) -> str:
    info = schema.get("info") or {}
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(str(info.get('title', 'API')))}"
        f" API</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(str(info.get('title', 'API')))} <span class=muted>{escape(str(info.get('version', '')))}"
        f"</span></h1>",
        f"<p class=muted>The OpenAPI document itself: <a href='{escape(json_url)}'>{escape(json_url)}</a></p>",
    ]
    by_tag: dict[str, list[tuple[str, str, dict]]] = {}
    for path, item in sorted((schema.get("paths") or {}).items()):
        for method in _METHODS:
            operation = item.get(method)
            if isinstance(operation, dict):
                tag = (operation.get("tags") or ["Other"])[0]
                by_tag.setdefault(tag, []).append((method, path, operation))
    for tag, operations in by_tag.items():
        parts.append(f"<h2>{escape(tag)}</h2>")
        parts.extend(_operation(method, path, op) for method, path, op in operations)
    parts.append("</body></html>")
    return "".join(parts)


def _operation(method: str, path: str, op: dict[str, Any]) -> str:
    html = [
        f"<div class=op><div><span class='method {method}'>{method}</span> <code>{escape(path)}</code>",
        f" — {escape(str(op['summary']))}" if op.get("summary") else "",
        "</div>",
    ]
    if op.get("description"):
        html.append(f"<p>{escape(str(op['description']))}</p>")
    params = op.get("parameters") or []
    if params:
        rows = "".join(
            f"<tr><td><code>{escape(str(p.get('name')))}</code></td><td>{escape(str(p.get('in')))}</td>"
            f"<td>{'required' if p.get('required') else 'optional'}</td>"
            f"<td><code>{escape(json.dumps((p.get('schema') or {}).get('type', '')))}</code></td></tr>"
            for p in params
        )
        html.append(f"<table><tr><th>parameter</th><th>in</th><th></th><th>type</th></tr>{rows}</table>")
    body = (op.get("requestBody") or {}).get("content") or {}
    for media, content in body.items():
        html.append(
            f"<details><summary>request body ({escape(media)})</summary>"
            f"<pre>{escape(json.dumps(content.get('schema', {}), indent=2))}</pre></details>"
        )
    responses = op.get("responses") or {}
    if responses:
        listed = ", ".join(
            f"{escape(str(code))} {escape(str((r or {}).get('description', '')))}" for code, r in responses.items()
        )
        html.append(f"<p class=muted>responses: {listed}</p>")
    html.append("</div>")
    return "".join(html)


class SelfContainedDocs(OpenAPIRenderPlugin):
    """The page above at the schema path's root (`/schema`)."""

    def __init__(self) -> None:
        super().__init__(path="/", favicon="")

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        return render_docs(openapi_schema, self.get_openapi_json_route(request)).encode()


def render_plugins() -> list[OpenAPIRenderPlugin]:
    return [SelfContainedDocs(), JsonRenderPlugin()]
