"""Blind review over HTTP: the `/review` page for reviewers, and the admin routes the CLI uses.

A reviewer opens `/review?token=...` (the URL `understudy review invite NAME` prints; the admin
token works too, as reviewer `admin`). The page is one self-contained file (review_page.html:
inline CSS and vanilla JS, nothing fetched from elsewhere); it asks `/review/api/next` for a
pair and posts judgments to `/review/api/judgments`, with the token as a bearer header. The
pair it receives is `routing.reviews.blind_view`: sides A and B, never which one is local.
Without a valid token every route answers 401 with an OpenAI-style error body.

The admin routes (`/admin/review/...`, `/admin/eval/...`, admin token only) run the protocol's
functions in the proxy, which owns the DuckDB file while it runs.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from litestar import Request, Response, Router, get, post

from understudy.proxy.access import same_token
from understudy.proxy.admin import require_admin_token
from understudy.proxy.errors import ProxyError
from understudy.proxy.state import ProxyState
from understudy.routing import reviews
from understudy.routing.reviews import ReviewError


@cache
def _page() -> str:
    return (Path(__file__).parent / "review_page.html").read_text(encoding="utf-8")


def _state(request: Request) -> ProxyState:
    proxy: ProxyState = request.app.state.proxy
    proxy.recorder.flush()  # pairs come from shadow results the recorder may still hold
    return proxy


def _reviewer(request: Request) -> tuple[ProxyState, str]:
    """Who is reviewing: the bearer token (or ?token= for the page itself) names them."""
    proxy = _state(request)
    token = request.headers.get("authorization", "").removeprefix("Bearer ").strip() or request.query_params.get(
        "token", ""
    )
    if token and same_token(token, proxy.admin_token):
        return proxy, "admin"
    name = reviews.reviewer_for_token(proxy.store.cursor(), token) if token else None
    if name is None:
        raise ProxyError(
            401,
            "a review token is needed: open the URL `understudy review invite NAME` printed",
            type="authentication_error",
            code="invalid_review_token",
        )
    return proxy, name


def _refused(exc: ReviewError) -> ProxyError:
    return ProxyError(400, str(exc), code="review_refused")


def _write(proxy: ProxyState, job):
    """`job(cursor)` on the store's single writer; a refused review is a 400."""
    try:
        return proxy.recorder.run(lambda store: job(store.cursor()))
    except ReviewError as exc:
        raise _refused(exc) from None


@get(
    "/review", sync_to_thread=True, include_in_schema=True, tags=["Review"], summary="Blind review page (token needed)"
)
def review_page(request: Request) -> Response:
    _reviewer(request)
    return Response(_page(), media_type="text/html; charset=utf-8", headers={"cache-control": "no-store"})


@get("/review/api/next", sync_to_thread=True, include_in_schema=False)
def review_next(request: Request, site: str = "") -> dict:
    proxy, reviewer = _reviewer(request)
    return {"item": reviews.next_item(proxy.store.cursor(), reviewer, site or None)}


@post("/review/api/judgments", sync_to_thread=True, include_in_schema=False, status_code=201)
def review_judgment(request: Request, data: Any) -> dict:
    proxy, reviewer = _reviewer(request)
    recorded = _write(proxy, lambda cur: reviews.record_judgment(cur, reviewer, data))
    proxy.router.review_changed(recorded["site"])  # on a creative site the review decides
    return recorded


# ---- admin (the CLI) -------------------------------------------------------------------------


@post("/invite", sync_to_thread=True, status_code=200)
def admin_invite(request: Request, data: dict[str, Any]) -> dict:
    proxy = _state(request)
    token = _write(proxy, lambda cur: reviews.invite(cur, str(data.get("name") or "")))
    return {
        "name": data["name"].strip(),
        "token": token,
        "url": f"{str(request.base_url).rstrip('/')}/review?token={token}",
    }


@post("/plan", sync_to_thread=True, status_code=200)
def admin_plan(request: Request, data: dict[str, Any]) -> dict:
    return _write(
        _state(request),
        lambda cur: reviews.draw_plan(
            cur,
            str(data.get("site")),
            int(data.get("pairs") or 0),
            by=data.get("by") or "version",
            shared=data.get("shared"),
            seed=data.get("seed"),
        ),
    )


@post("/rubric", sync_to_thread=True, status_code=200)
def admin_set_rubric(request: Request, data: dict[str, Any]) -> dict:
    proxy = _state(request)
    return _write(proxy, lambda cur: reviews.set_rubric(cur, str(data.get("site")), data.get("rubric")))


@get("/rubric", sync_to_thread=True)
def admin_rubric(request: Request, site: str) -> dict:
    return reviews.rubric_for(_state(request).store.cursor(), site)


@get("/results", sync_to_thread=True)
def admin_results(request: Request, site: str) -> dict:
    return reviews.results(_state(request).store.cursor(), site)


@get("/export", sync_to_thread=True)
def admin_export(request: Request, site: str) -> dict:
    return reviews.export_set(_state(request).store.cursor(), site)


@post("/import", sync_to_thread=True, status_code=200)
def admin_import(request: Request, data: dict[str, Any]) -> dict:
    proxy = _state(request)
    imported = _write(proxy, lambda cur: reviews.import_set(cur, data.get("set"), data.get("reviewer")))
    for site_id in imported["sites"]:
        proxy.router.review_changed(site_id)
    return imported


@get("/inputs", sync_to_thread=True)
def admin_eval_inputs(request: Request, site: str, versions: str = "", limit: int = 0) -> dict:
    from understudy.routing.evaluation import EvalError, eval_inputs

    proxy = _state(request)
    try:
        return eval_inputs(
            proxy.store, site, _versions(versions), limit=limit or None, validators=proxy.router.validators
        )
    except EvalError as exc:
        raise ProxyError(409, str(exc), code="eval_refused") from None


@post("/runs", sync_to_thread=True, status_code=200)
def admin_eval_run(request: Request, data: dict[str, Any]) -> dict:
    from understudy.routing.evaluation import store_run

    return {"id": _state(request).recorder.run(lambda store: store_run(store.cursor(), data))}


def _versions(text: str) -> list[int] | None:
    try:
        return [int(v.strip().lower().removeprefix("v")) for v in text.split(",") if v.strip()] or None
    except ValueError:
        raise ProxyError(400, f"versions must be like 1,2 or v1,v2 (got {text!r})", code="invalid_versions") from None


review_routes = [
    review_page,
    review_next,
    review_judgment,
    Router(
        path="/admin/review",
        route_handlers=[
            admin_invite,
            admin_plan,
            admin_set_rubric,
            admin_rubric,
            admin_results,
            admin_export,
            admin_import,
        ],
        guards=[require_admin_token],
        include_in_schema=False,
    ),
    Router(
        path="/admin/eval",
        route_handlers=[admin_eval_inputs, admin_eval_run],
        guards=[require_admin_token],
        include_in_schema=False,
    ),
]
