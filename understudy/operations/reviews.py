"""Blind human review (`reporting.reviews`) and held-out evaluation runs (`routing.evaluation`):
what `understudy review ...` and `understudy eval` do to the store. The reviewers' own routes
(the `/review` page and its API, with a reviewer's token) are not operations: `proxy.review`."""

from __future__ import annotations

from typing import Any

from understudy.operations.base import Context, Operation, Param, refused

SITE = Param("site")


def _review_refused():
    from understudy.reporting.reviews import ReviewError

    return refused(ReviewError, 400, "review_refused")


def invite(ctx: Context, args: dict[str, Any]) -> dict:
    """A review token for a reviewer (a new invite replaces the old token) and the review page's URL."""
    from understudy.reporting.reviews import invite

    name = str(args["name"] or "")
    with _review_refused():
        token = ctx.write(lambda store: invite(store.cursor(), name))
    base = ctx.live.base_url if ctx.live is not None else f"http://{ctx.settings.host}:{ctx.settings.port}"
    result = {"name": name.strip(), "token": token, "url": f"{base}/review?token={token}"}
    if ctx.live is None:
        result["note"] = "no proxy runs now: start it (understudy serve)"
    return result


def plan(ctx: Context, args: dict[str, Any]) -> dict:
    """A stratified sample of shadow pairs to review, and how many judgments a ±0.25 interval needs."""
    from understudy.reporting.reviews import draw_plan

    with _review_refused():
        return ctx.write(
            lambda store: draw_plan(
                store.cursor(),
                str(args["site"]),
                int(args["pairs"] or 0),
                by=args["by"] or "version",
                shared=args["shared"],
                seed=args["seed"],
            )
        )


def set_rubric(ctx: Context, args: dict[str, Any]) -> dict:
    """Replace a site's rubric (criteria scored 1-5)."""
    from understudy.reporting.reviews import set_rubric

    with _review_refused():
        return ctx.write(lambda store: set_rubric(store.cursor(), str(args["site"]), args["rubric"]))


def rubric(ctx: Context, args: dict[str, Any]) -> dict:
    """A site's rubric (its own, else the default for its response type)."""
    from understudy.reporting.reviews import rubric_for

    with _review_refused():
        return rubric_for(ctx.db.cursor(), args["site"])


def results(ctx: Context, args: dict[str, Any]) -> dict:
    """Per criterion: upstream and local means with intervals, the paired difference, preferences, agreement."""
    from understudy.reporting.reviews import results

    with _review_refused():
        return results(ctx.db.cursor(), args["site"])


def export_set(ctx: Context, args: dict[str, Any]) -> dict:
    """A site's review pairs, blind, for a reviewer who works offline."""
    from understudy.reporting.reviews import export_set

    with _review_refused():
        return export_set(ctx.db.cursor(), args["site"])


def import_set(ctx: Context, args: dict[str, Any]) -> dict:
    """An offline review set's judgments (all of them, or none if any is incomplete)."""
    from understudy.reporting.reviews import import_set

    with _review_refused():
        imported = ctx.write(lambda store: import_set(store.cursor(), args["set"], args["reviewer"]))
    if ctx.live is not None:
        for site_id in imported["sites"]:  # on a creative site the review decides
            ctx.live.review_changed(site_id)
    return imported


def eval_inputs(ctx: Context, args: dict[str, Any]) -> dict:
    """What `understudy eval` runs: the site's held-out examples and its usable versions."""
    from understudy.routing.evaluation import EvalError, eval_inputs

    with refused(EvalError, 409, "eval_refused"):
        return eval_inputs(
            ctx.db, args["site"], args["versions"], limit=args["limit"] or None, validators=ctx.validators()
        )


def store_eval(ctx: Context, args: dict[str, Any]) -> dict:
    """Keep an evaluation's result for the HTML report."""
    from understudy.routing.evaluation import store_run

    return {"id": ctx.write(lambda store: store_run(store.cursor(), args["result"]))}


OPERATIONS = (
    Operation("review_invite", "POST", "/review/invite", invite, (Param("name", default=""),), read_only=False),
    Operation(
        "review_plan",
        "POST",
        "/review/plan",
        plan,
        (
            SITE,
            Param("pairs", "int", 0),
            Param("by", default="version"),
            Param("shared", "int", None),
            Param("seed", "int", None),
        ),
        read_only=False,
    ),
    Operation(
        "review_set_rubric", "POST", "/review/rubric", set_rubric, (SITE, Param("rubric", "json")), read_only=False
    ),
    Operation("review_rubric", "GET", "/review/rubric", rubric, (SITE,)),
    Operation("review_results", "GET", "/review/results", results, (SITE,)),
    Operation("review_export", "GET", "/review/export", export_set, (SITE,)),
    Operation(
        "review_import",
        "POST",
        "/review/import",
        import_set,
        (Param("set", "json"), Param("reviewer", default=None)),
        read_only=False,
    ),
    Operation(
        "eval_inputs",
        "GET",
        "/eval/inputs",
        eval_inputs,
        (SITE, Param("versions", "versions", None), Param("limit", "int", 0)),
    ),
    Operation(
        "eval_store", "POST", "/eval/runs", store_eval, (Param("result", "json"),), read_only=False, body="result"
    ),
)
