"""The admin API: the operations table (`understudy.operations`) mounted under /admin.

Every operation of the table is one route here, generated from its declaration (method, path,
parameters); no route is written by hand. What the proxy adds is the `Live` context: reads first
flush the recorder, so a `understudy sites` right after a request sees it; every change is a job
on the recorder's writer thread (`Recorder.run`): the store has one writer, and an operator's
action is applied to the state as it is when the action runs, after everything queued before
it; a changed site is reloaded in the site registry and the router at once. Refusals are the
operations' `OperationError`, answered as OpenAI-style errors (mapped once, in `proxy.errors`).

Every route needs `Authorization: Bearer <admin token>` (the token is in the data directory's
proxy.json, readable by the user who started the proxy). `GET /report` (outside /admin) is the
report for a browser, with the token as a header or `?token=`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from litestar import Request, Response, Router, get, route
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers import HTTPRouteHandler
from litestar.handlers.base import BaseRouteHandler

from understudy.operations import OPERATIONS, Context, Operation, Text
from understudy.proxy.access import has_admin_token, same_token
from understudy.proxy.errors import ProxyError
from understudy.proxy.state import ProxyState
from understudy.reporting.views import render_report
from understudy.store import SiteRecord, Store

T = TypeVar("T")


def require_admin_token(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    proxy: ProxyState = connection.app.state.proxy
    given = connection.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not given or not same_token(given, proxy.admin_token):
        raise NotAuthorizedException("admin token missing or wrong")


class LiveProxy:
    """The running proxy as an operation sees it (`operations.base.Live`)."""

    def __init__(self, proxy: ProxyState, base_url: str):
        self.proxy = proxy
        self.base_url = base_url
        self.router = proxy.router
        self.upstream_table = proxy.upstream.table

    def flush(self) -> None:
        self.proxy.recorder.flush()

    def write(self, job: Callable[[Store], T]) -> T:
        return self.proxy.recorder.run(job)

    def refresh_site(self, site_id: str) -> None:
        self.proxy.refresh_site(site_id)

    def replace_site(self, record: SiteRecord) -> None:
        self.proxy.sites.replace(record)

    def review_changed(self, site_id: str) -> None:
        self.proxy.router.review_changed(site_id)


def _litestar_path(path: str) -> str:
    return path.replace("}", ":str}")


def admin_route(op: Operation) -> HTTPRouteHandler:
    """The route of one operation: its arguments from the path, query or JSON body, run with the
    proxy's live state (a blocking operation in a worker thread), its result as JSON or text."""

    async def handler(request: Request) -> Response:
        proxy: ProxyState = request.app.state.proxy
        body = (await request.json()) if op.method == "POST" else None
        args = op.args_from_http(request.path_params, request.query_params, body)
        ctx = Context(proxy.settings, proxy.store, LiveProxy(proxy, str(request.base_url).rstrip("/")))
        result: Any = await op.call_async(ctx, args)
        if isinstance(result, Text):
            return Response(result.body, media_type=f"{result.media_type}; charset=utf-8")
        return Response(result, status_code=200, media_type="application/json")

    handler.__doc__ = op.run.__doc__
    return route(_litestar_path(op.path), http_method=[op.method], name=f"admin:{op.name}")(handler)


@get("/report", sync_to_thread=True, include_in_schema=True, tags=["Operations"], summary="Shadow-mode report (HTML)")
def public_report(request: Request, site: str = "") -> Response:
    """The HTML report, for a browser: the admin token as a bearer header or `?token=`, unless the
    proxy runs with `--public-report` (aggregates only, no prompts). Each hit flushes the recorder
    and aggregates the whole store, so strangers must not be able to call it at will."""
    proxy: ProxyState = request.app.state.proxy
    if not proxy.settings.public_report and not has_admin_token(request, proxy.admin_token):
        raise ProxyError(
            401,
            "the report needs the admin token (proxy.json's admin_token) as a bearer header or "
            "?token=, or a proxy started with --public-report",
            type="authentication_error",
            code="admin_token_required",
        )
    proxy.recorder.flush()
    return Response(
        render_report(proxy.store, proxy.settings, site or None, "html"), media_type="text/html; charset=utf-8"
    )


admin_router = Router(
    path="/admin",
    route_handlers=[admin_route(op) for op in OPERATIONS.values()],
    guards=[require_admin_token],
    include_in_schema=False,
)
