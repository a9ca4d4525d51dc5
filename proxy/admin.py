"""The admin API: what the CLI uses while a proxy owns the DuckDB file.

Every route needs `Authorization: Bearer <admin token>` (the token is in the data
directory's proxy.json, readable by the user who started the proxy). Reads first flush
the recorder, so a `understudy sites` right after a request sees it. A site that does not
exist is a 404 (mapped once, in `proxy.errors`). Every change is a job on the recorder's writer
thread (`Recorder.run`): the store has one writer, and an operator's action is applied to the
state as it is when the action runs, after everything queued before it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

from understudy.exports import export_site
from understudy.proxy.access import has_admin_token, same_token
from understudy.proxy.errors import ProxyError
from understudy.proxy.state import ProxyState
from understudy.proxy.types import validation_error
from understudy.reports import render_report
from understudy.routing.actions import ActionError, policy_view, run_action
from understudy.routing.registry import list_versions
from understudy.store import SiteNameTaken
from understudy.training_jobs import (
    NotEnoughData,
    PathOutsideDataDir,
    confine_result,
    job_started,
    manual_reason,
    prepare_job,
    register_result,
    training_candidates,
    training_schedule,
)


def require_admin_token(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    proxy: ProxyState = connection.app.state.proxy
    given = connection.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not given or not same_token(given, proxy.admin_token):
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
    if limit < 1:
        raise ProxyError(400, f"limit must be at least 1, not {limit}", code="invalid_limit", param="limit")
    return _proxy(request).store.recent_calls(site_ref, limit)


@post("/sites/{site_ref:str}/rename", sync_to_thread=True, status_code=200)
def rename_site(request: Request, site_ref: str, data: dict[str, str]) -> dict:
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ProxyError(400, "the new name must not be empty", code="invalid_name", param="name")
    proxy = _proxy(request)
    try:
        record = proxy.recorder.run(lambda store: store.rename_site(site_ref, name))
    except SiteNameTaken as exc:
        raise ProxyError(409, str(exc), code="name_taken", param="name") from None
    proxy.sites.replace(record)
    return {"id": record.id, "name": record.name}


@post("/sites/{site_ref:str}/export", sync_to_thread=True, status_code=200)
def export_dataset(request: Request, site_ref: str, data: dict[str, Any]) -> dict:
    """Write the site's dataset (JSONL and/or Parquet) to the given paths, which must lie inside the
    data dir (the CLI stages files there and copies them out); the proxy owns the store."""
    proxy = _proxy(request)
    jsonl, parquet = _path_or_none(data.get("jsonl")), _path_or_none(data.get("parquet"))
    for param, path in (("jsonl", jsonl), ("parquet", parquet)):
        if path is not None and not proxy.settings.within_data_dir(path):
            raise ProxyError(
                400,
                f"export path {path} is outside the data dir {proxy.settings.data_dir}: the proxy "
                "writes only there (`understudy export` copies the file where you asked)",
                code="path_outside_data_dir",
                param=param,
            )
    return export_site(
        proxy.store,
        site_ref,
        filtered=bool(data.get("filtered", True)),
        jsonl=jsonl,
        parquet=parquet,
        teacher_model=data.get("teacher_model"),
        validators=proxy.router.validators,
    )


@post("/sites/{site_ref:str}/training-job", sync_to_thread=True, status_code=200)
def training_job(request: Request, site_ref: str, data: dict[str, Any]) -> dict:
    """Snapshot the site's dataset and return the job a worker runs."""
    proxy = _proxy(request)
    try:
        job = prepare_job(proxy.store, proxy.settings, site_ref, data.get("config") or {}, data.get("control"))
    except (NotEnoughData, ValueError) as exc:
        raise ProxyError(409, str(exc), code="not_enough_data") from None
    if job["control"] != "base":  # a base control is registered at once, nothing is trained
        proxy.recorder.run(lambda store: job_started(store, job, manual_reason(job), "cli"))
    return job


@post("/training/candidates", sync_to_thread=True, status_code=200)
def training_candidates_route(request: Request, data: dict[str, Any]) -> list[dict]:
    """Jobs for the sites that should train now under the worker's rules (`retraining_reason`,
    quiet window open), each with its reason, which the site's audit also records."""
    proxy = _proxy(request)
    try:
        candidates, _ = training_candidates(proxy.store, data)
    except ValueError as exc:
        raise ProxyError(400, str(exc), code="invalid_rules") from None
    jobs = []
    for site_id, reason in candidates:
        try:
            job = prepare_job(proxy.store, proxy.settings, site_id)
        except NotEnoughData:
            continue
        jobs.append({**job, "reason": reason})
        proxy.recorder.run(lambda store, job=job, reason=reason: job_started(store, job, reason, "scheduler"))
    return jobs


@post("/training/schedule", sync_to_thread=True, status_code=200)
def training_schedule_route(request: Request, data: dict[str, Any]) -> dict:
    """`understudy jobs`: the quiet window, each site's next job and why, recent jobs and their outcomes."""
    try:
        return training_schedule(_proxy(request).store, data)
    except ValueError as exc:
        raise ProxyError(400, str(exc), code="invalid_rules") from None


@post("/versions", sync_to_thread=True, status_code=200)
def register_version_route(request: Request, data: dict[str, Any]) -> dict:
    """A worker's training result becomes the site's next version (activated if it earned it); its
    adapter and snapshot must lie inside the data dir (the local model would load any file named)."""
    proxy = _proxy(request)
    try:
        confine_result(data, proxy.settings)
    except PathOutsideDataDir as exc:
        raise ProxyError(400, str(exc), code="path_outside_data_dir", param=exc.field) from None
    version = proxy.recorder.run(lambda store: register_result(store, data))
    proxy.refresh_site(data["site_id"])
    return version


@get("/sites/{site_ref:str}/versions", sync_to_thread=True)
def site_versions(request: Request, site_ref: str) -> list[dict]:
    proxy = _proxy(request)
    return [v.to_dict() for v in list_versions(proxy.store, proxy.store.resolve_site(site_ref).id)]


@post("/sites/{site_ref:str}/action", sync_to_thread=True, status_code=200)
def site_action(request: Request, site_ref: str, data: dict[str, Any]) -> dict:
    """pin / unpin / rollback / promote, effective for the next request."""
    proxy = _proxy(request)
    try:
        record = proxy.recorder.run(lambda store: run_action(store, site_ref, data))
    except ActionError as exc:
        raise ProxyError(409, str(exc), code="action_refused") from None
    proxy.refresh_site(record.id)
    if data.get("action") == "policy":  # what the site's policy is now, to print
        return {
            **record.__dict__,
            "policy": policy_view(
                proxy.store, record.id, proxy.settings.routing_policy, proxy.settings.sampling_policy
            ),
        }
    return record.__dict__


@get("/sites/{site_ref:str}/policy", sync_to_thread=True)
def site_policy(request: Request, site_ref: str) -> dict:
    """The site's own overrides and the settings in effect."""
    proxy = _proxy(request)
    site = proxy.store.resolve_site(site_ref)
    return {
        "id": site.id,
        "name": site.name,
        "policy": policy_view(proxy.store, site.id, proxy.settings.routing_policy, proxy.settings.sampling_policy),
    }


@post("/score", sync_to_thread=True, status_code=200)
def score_pair_route(request: Request, data: dict[str, Any]) -> dict:
    """One (upstream, local) pair scored exactly as this proxy's shadow mode would (`understudy score`)."""
    from understudy.pair_scoring import score_request

    chat_request, upstream, local = data.get("request"), data.get("upstream"), data.get("local")
    if not isinstance(chat_request, dict) or not isinstance(upstream, str) or not isinstance(local, str):
        raise ProxyError(
            400, 'body must be {"request": {...}, "upstream": "...", "local": "..."}', code="invalid_score"
        )
    problem = validation_error(chat_request)
    if problem is not None:
        raise ProxyError(400, f"invalid chat completion request: {problem}", code="invalid_request")
    proxy = _proxy(request)
    return score_request(proxy.router, proxy.store, chat_request, upstream, local)


@get("/upstreams")
async def upstream_routes(request: Request, check: bool = False) -> dict:
    """The routes this proxy forwards by (its own settings and config), checked from here with `check`."""
    from understudy.proxy.upstream_check import describe_upstreams

    proxy: ProxyState = request.app.state.proxy
    return await describe_upstreams(proxy.upstream.table, check)


@get("/report", sync_to_thread=True, media_type="text/plain")
def admin_report(request: Request, site: str = "", format: str = "text", color: int = 0, width: int = 120) -> Response:
    proxy = _proxy(request)
    try:
        text = render_report(proxy.store, proxy.settings, site or None, format, color=bool(color), width=width)
    except ValueError as exc:
        raise ProxyError(400, str(exc), code="invalid_format") from None
    media = {"html": "text/html", "json": "application/json"}.get(format, "text/plain")
    return Response(text, media_type=f"{media}; charset=utf-8")


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


def _path_or_none(value: Any) -> Path | None:
    return Path(value) if value else None


admin_router = Router(
    path="/admin",
    route_handlers=[
        list_sites,
        site_calls,
        rename_site,
        export_dataset,
        training_job,
        training_candidates_route,
        training_schedule_route,
        register_version_route,
        site_versions,
        site_action,
        site_policy,
        score_pair_route,
        upstream_routes,
        admin_report,
    ],
    guards=[require_admin_token],
    include_in_schema=False,
)
