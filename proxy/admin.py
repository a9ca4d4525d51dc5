"""The admin API: what the CLI uses while a proxy owns the DuckDB file.

Every route needs `Authorization: Bearer <admin token>` (the token is in the data
directory's proxy.json, readable by the user who started the proxy). Reads first flush
the recorder, so a `understudy sites` right after a request sees it.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from litestar import Request, Router, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

from proxy.errors import ProxyError
from proxy.state import ProxyState
from understudy.exports import export_site
from understudy.store import SiteNotFound


def require_admin_token(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    proxy: ProxyState = connection.app.state.proxy
    given = connection.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not given or not hmac.compare_digest(given, proxy.admin_token):
        raise NotAuthorizedException("admin token missing or wrong")


def _proxy(request: Request) -> ProxyState:
    proxy: ProxyState = request.app.state.proxy
    proxy.recorder.flush()
    return proxy


@get("/sites", sync_to_thread=True)
def list_sites(request: Request) -> list[dict]:
    return _proxy(request).store.site_summaries()


@get("/sites/{site_ref:str}/calls", sync_to_thread=True)
def site_calls(request: Request, site_ref: str, limit: int = 20) -> list[dict]:
    try:
        return _proxy(request).store.recent_calls(site_ref, limit)
    except SiteNotFound as exc:
        raise ProxyError(404, str(exc), code="site_not_found") from None


@post("/sites/{site_ref:str}/rename", sync_to_thread=True, status_code=200)
def rename_site(request: Request, site_ref: str, data: dict[str, str]) -> dict:
    name = (data.get("name") or "").strip()
    if not name:
        raise ProxyError(400, "body must be {\"name\": \"<new name>\"}", code="invalid_name")
    proxy = _proxy(request)
    try:
        record = proxy.store.rename_site(site_ref, name)
    except SiteNotFound as exc:
        raise ProxyError(404, str(exc), code="site_not_found") from None
    proxy.sites.replace(record)
    return {"id": record.id, "name": record.name}


@post("/sites/{site_ref:str}/export", sync_to_thread=True, status_code=200)
def export_dataset(request: Request, site_ref: str, data: dict[str, Any]) -> dict:
    """Write the site's dataset (JSONL and/or Parquet) to the given paths; the proxy owns the store."""
    proxy = _proxy(request)
    try:
        return export_site(proxy.store, site_ref, filtered=bool(data.get("filtered", True)),
                           jsonl=_path_or_none(data.get("jsonl")), parquet=_path_or_none(data.get("parquet")),
                           teacher_model=data.get("teacher_model"))
    except SiteNotFound as exc:
        raise ProxyError(404, str(exc), code="site_not_found") from None


def _path_or_none(value: Any) -> Path | None:
    return Path(value) if value else None


admin_router = Router(path="/admin", route_handlers=[list_sites, site_calls, rename_site, export_dataset],
                      guards=[require_admin_token], include_in_schema=False)
