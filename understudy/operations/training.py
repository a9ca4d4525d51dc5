"""Training: a job for a site, the scheduler's candidates and schedule, and a worker's result
registered as the site's next version.

The training worker sends `CANDIDATES` and `REGISTER` to the proxy (`understudy.operations.client`):
like `base`, this module imports nothing of the proxy (nor, until an operation runs here, of
routing or training).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from understudy.operations.base import Context, Operation, Param, refused
from understudy.store import Store


def training_job(ctx: Context, args: dict[str, Any]) -> dict:
    """Snapshot the site's dataset and return the job a worker runs (`understudy train`)."""
    from understudy.training.jobs import job_started, manual_reason, prepare_job

    if ctx.live is None:
        ctx.settings.ensure_data_dir()
    with refused(ValueError, 409, "not_enough_data"):  # training_jobs.NotEnoughData, a bad override
        job = prepare_job(ctx.db, ctx.settings, args["site"], args["config"] or {}, args["control"])
    if job["control"] != "base":  # a base control is registered at once, nothing is trained
        ctx.write(lambda store: job_started(store, job, manual_reason(job), "cli"))
    return job


def training_candidates(ctx: Context, args: dict[str, Any]) -> list[dict]:
    """Jobs for the sites that should train now under the worker's rules (`retraining_reason`,
    quiet window open), each with its reason, which the site's audit also records."""
    from understudy.training.jobs import NotEnoughData, prepare_job, training_candidates

    with refused(ValueError, 400, "invalid_rules"):
        candidates, _ = training_candidates(ctx.db, args["rules"])
    jobs = []
    for site_id, reason in candidates:
        try:
            job = prepare_job(ctx.db, ctx.settings, site_id)
        except NotEnoughData:
            continue
        jobs.append({**job, "reason": reason})
        ctx.write(_started(job, reason))
    return jobs


def _started(job: dict[str, Any], reason: str) -> Callable[[Store], None]:
    """The audit of a job the scheduler starts, as a write."""
    from understudy.training.jobs import job_started

    return lambda store: job_started(store, job, reason, "scheduler")


def training_schedule(ctx: Context, args: dict[str, Any]) -> dict:
    """`understudy jobs`: the quiet window, each site's next job and why, recent jobs and their outcomes."""
    from understudy.training.jobs import training_schedule

    with refused(ValueError, 400, "invalid_rules"):
        return training_schedule(ctx.db, args["rules"])


def register_version(ctx: Context, args: dict[str, Any]) -> dict:
    """A worker's training result becomes the site's next version (activated if it earned it); its
    adapter and snapshot must lie inside the data dir (the local model would load any file named)."""
    from understudy.training.jobs import PathOutsideDataDir, confine_result, register_result

    result = args["result"]
    with refused(PathOutsideDataDir, 400, "path_outside_data_dir"):
        confine_result(result, ctx.settings)
    version = ctx.write(lambda store: register_result(store, result))
    ctx.refresh_site(result["site_id"])
    return version


RULES = Param("rules", "json")  # training_jobs.scheduling_rules(settings), what the worker runs by
TRAINING_JOB = Operation(
    "training_job",
    "POST",
    "/sites/{site}/training-job",
    training_job,
    (Param("site"), Param("config", "json", None), Param("control", default=None)),
    read_only=False,
)
CANDIDATES = Operation(
    "training_candidates", "POST", "/training/candidates", training_candidates, (RULES,), read_only=False, body="rules"
)
SCHEDULE = Operation("training_schedule", "POST", "/training/schedule", training_schedule, (RULES,), body="rules")
REGISTER = Operation(
    "register_version",
    "POST",
    "/versions",
    register_version,
    (Param("result", "json"),),
    read_only=False,
    body="result",
)
OPERATIONS = (TRAINING_JOB, CANDIDATES, SCHEDULE, REGISTER)
