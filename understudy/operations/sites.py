"""Sites: list them, their calls and versions, rename, export, and the operator's actions
(pin, unpin, rollback, promote, policy), which a running proxy applies at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from understudy.operations.base import Context, Operation, OperationError, Param, refused

SITE = Param("site")


def sites(ctx: Context, args: dict[str, Any]) -> list[dict]:
    """Every site with its calls, parse-valid rate, state and who serves it."""
    return ctx.db.site_summaries()


def calls(ctx: Context, args: dict[str, Any]) -> list[dict]:
    """A site's recent calls."""
    if args["limit"] < 1:
        raise OperationError(400, f"limit must be at least 1, not {args['limit']}", code="invalid_limit", param="limit")
    return ctx.db.recent_calls(args["site"], args["limit"])


def rename(ctx: Context, args: dict[str, Any]) -> dict:
    """Give a site a new readable name (one no other site has)."""
    from understudy.store import SiteNameTaken

    name = args["name"]
    if not isinstance(name, str) or not name.strip():
        raise OperationError(400, "the new name must not be empty", code="invalid_name", param="name")
    with refused(SiteNameTaken, 409, "name_taken", param="name"):
        record = ctx.write(lambda store: store.rename_site(args["site"], name))
    if ctx.live is not None:
        ctx.live.replace_site(record)
    return {"id": record.id, "name": record.name}


def versions(ctx: Context, args: dict[str, Any]) -> list[dict]:
    """A site's trained versions: status, base, dataset, held-out metrics."""
    from understudy.routing.registry import list_versions

    return [v.to_dict() for v in list_versions(ctx.db, ctx.db.resolve_site(args["site"]).id)]


def _policy_view(ctx: Context, site_id: str) -> dict:
    from understudy.routing.actions import policy_view

    return policy_view(ctx.db, site_id, ctx.settings.routing_policy, ctx.settings.sampling_policy)


def policy(ctx: Context, args: dict[str, Any]) -> dict:
    """A site's own policy overrides and the settings in effect."""
    site = ctx.db.resolve_site(args["site"])
    return {"id": site.id, "name": site.name, "policy": _policy_view(ctx, site.id)}


def action(ctx: Context, args: dict[str, Any]) -> dict:
    """pin / unpin / rollback / promote / policy (`routing.actions`), effective for the next request."""
    from understudy.routing.actions import ActionError, run_action

    request = {k: v for k, v in args.items() if k != "site" and v is not None}
    with refused(ActionError, 409, "action_refused"):
        record = ctx.write(lambda store: run_action(store, args["site"], request))
    ctx.refresh_site(record.id)
    if request["action"] == "policy":  # what the site's policy is now, to print
        return {**record.__dict__, "policy": _policy_view(ctx, record.id)}
    return dict(record.__dict__)


def export(ctx: Context, args: dict[str, Any]) -> dict:
    """Write a site's dataset (JSONL and/or Parquet). A proxy writes only inside the data dir
    (`understudy export` stages a file wanted elsewhere there and moves it)."""
    from understudy.training.exports import export_site

    paths = {kind: Path(args[kind]) if args[kind] else None for kind in ("jsonl", "parquet")}
    for kind, path in paths.items():
        if ctx.live is not None and path is not None and not ctx.settings.within_data_dir(path):
            raise OperationError(
                400,
                f"export path {path} is outside the data dir {ctx.settings.data_dir}: the proxy "
                "writes only there (`understudy export` copies the file where you asked)",
                code="path_outside_data_dir",
                param=kind,
            )
    return export_site(
        ctx.db,
        args["site"],
        filtered=bool(args["filtered"]),
        jsonl=paths["jsonl"],
        parquet=paths["parquet"],
        teacher_model=args["teacher_model"],
        validators=ctx.validators(),
    )


OPERATIONS = (
    Operation("sites", "GET", "/sites", sites),
    Operation("calls", "GET", "/sites/{site}/calls", calls, (SITE, Param("limit", "int", 20))),
    Operation("rename", "POST", "/sites/{site}/rename", rename, (SITE, Param("name", default="")), read_only=False),
    Operation("versions", "GET", "/sites/{site}/versions", versions, (SITE,)),
    Operation("policy", "GET", "/sites/{site}/policy", policy, (SITE,)),
    Operation(
        "action",
        "POST",
        "/sites/{site}/action",
        action,
        (
            SITE,
            Param("action"),
            Param("target", default=None),  # pin: upstream | local | local@vN
            Param("to_version", "int", None),  # rollback: the version to activate (None: back to upstream)
            Param("version", "int", None),  # promote
            Param("overrides", "json", None),  # policy: merged into the site's overrides (or replacing them)
            Param("replace", "bool", None),
        ),
        read_only=False,
    ),
    Operation(
        "export",
        "POST",
        "/sites/{site}/export",
        export,
        (
            SITE,
            Param("filtered", "bool", True),
            Param("jsonl", default=None),
            Param("parquet", default=None),
            Param("teacher_model", default=None),
        ),
    ),
)
