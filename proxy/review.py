"""Blind review over HTTP: the `/review` page for reviewers and the API it calls.

A reviewer opens `/review?token=...` (the URL `understudy review invite NAME` prints; the admin
token works too, as reviewer `admin`). The page is one self-contained file (review_page.html:
inline CSS and vanilla JS, nothing fetched from elsewhere); it asks `/review/api/next` for a
pair and posts judgments to `/review/api/judgments`, with the token as a bearer header. The
pair it receives is `reporting.reviews.blind_view`: sides A and B, never which one is local.
Without a valid token every route answers 401 with an OpenAI-style error body.

What the CLI does (`understudy review ...`, `understudy eval`: invite, plan, rubric, results,
export, import, evaluation runs) are operations of the table (`understudy.operations.reviews`),
mounted with every other admin route under /admin by `proxy.admin` (admin token only).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from litestar import Request, Response, get, post

from understudy.proxy.access import same_token
from understudy.proxy.errors import ProxyError
from understudy.proxy.state import ProxyState
from understudy.reporting import reviews
from understudy.reporting.reviews import ReviewError


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


review_routes = [review_page, review_next, review_judgment]
