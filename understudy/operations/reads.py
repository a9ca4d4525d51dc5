"""The report, a pair scored as shadow mode scores it, and the upstream routes: reads whose
work lives in the proxy's modules (imported when one runs), so the training worker's client
never reaches this module."""

from __future__ import annotations

from typing import Any

from understudy.operations.base import Context, Operation, OperationError, Param, Text, refused

REPORT_MEDIA = {"html": "text/html", "json": "application/json"}


def report(ctx: Context, args: dict[str, Any]) -> Text:
    """The shadow-mode report (text, JSON or a self-contained HTML page) of one site or all."""
    from understudy.reporting.views import render_report

    fmt = args["format"]
    with refused(ValueError, 400, "invalid_format"):
        body = render_report(
            ctx.db, ctx.settings, args["site"] or None, fmt, color=bool(args["color"]), width=args["width"]
        )
    return Text(body, REPORT_MEDIA.get(fmt, "text/plain"))


def score(ctx: Context, args: dict[str, Any]) -> dict:
    """One (upstream, local) pair scored exactly as shadow mode would (`understudy score`): by the
    running proxy's router, else by one built from the settings and the store, if there is one."""
    from understudy.operations.pair_scoring import offline_router, score_request
    from understudy.proxy.types import validation_error

    chat_request, upstream, local = args["request"], args["upstream"], args["local"]
    if not isinstance(chat_request, dict) or not isinstance(upstream, str) or not isinstance(local, str):
        raise OperationError(
            400, 'body must be {"request": {...}, "upstream": "...", "local": "..."}', code="invalid_score"
        )
    problem = validation_error(chat_request)
    if problem is not None:
        raise OperationError(400, f"invalid chat completion request: {problem}", code="invalid_request")
    router = ctx.live.router if ctx.live is not None else offline_router(ctx.store, ctx.settings)
    return score_request(router, ctx.store, chat_request, upstream, local)


async def upstreams(ctx: Context, args: dict[str, Any]) -> dict:
    """The routes a proxy forwards by (the running one's own, else those these settings give),
    each checked from where this runs with `check`."""
    from understudy.proxy.upstream_check import describe_upstreams
    from understudy.proxy.upstreams import UpstreamConfigError, UpstreamTable

    if ctx.live is not None:
        table = ctx.live.upstream_table
    else:
        s = ctx.settings
        with refused(UpstreamConfigError, 400, "invalid_config"):
            table = UpstreamTable.from_config(s.config, s.data_dir, s.upstream_url, s.upstream_key, s.upstream_free)
    return await describe_upstreams(table, args["check"])


OPERATIONS = (
    Operation(
        "report",
        "GET",
        "/report",
        report,
        (
            Param("site", default=""),
            Param("format", default="text"),
            Param("color", "bool", False),
            Param("width", "int", 120),
        ),
        text=True,
        timeout_s=60.0,
    ),
    Operation(
        "score",
        "POST",
        "/score",
        score,
        (Param("request", "json", None), Param("upstream", default=None), Param("local", default=None)),
        store="optional",
    ),
    Operation(
        "upstreams", "GET", "/upstreams", upstreams, (Param("check", "bool", False),), store="none", timeout_s=120.0
    ),
)
