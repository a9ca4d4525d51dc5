"""Huey tasks: thin wrappers around `training.pipeline` and the proxy's admin API.

The queue is SqliteHuey in the data directory (RedisHuey when `UNDERSTUDY_REDIS_URL` is set),
built from the environment when this module is imported, as Huey's consumer expects a
module-level instance. `understudy worker` runs the consumer.

- `train_site(job)`: train one version, then hand the result to the proxy (or leave it in
  `result.json` for the proxy to register when it next starts).
- `schedule_training()`: periodic; asks the proxy which sites need a new version while it is
  quiet (configured hours and/or request rate), and enqueues a job for each. The rules and each
  job's reason are `understudy.training.jobs.retraining_reason`'s (first version, data grown 2x,
  a rejected, inconclusive or demoted version once new data arrived); the site's audit says why.
"""

from __future__ import annotations

import logging
from typing import Any

from huey import RedisHuey, SqliteHuey, crontab

from understudy.settings import Settings, load_settings

log = logging.getLogger("understudy.worker")


def make_huey(settings: Settings):
    if settings.redis_url:
        return RedisHuey("understudy", url=settings.redis_url)
    settings.ensure_data_dir()
    return SqliteHuey("understudy", filename=str(settings.huey_path))


settings = load_settings()
huey = make_huey(settings)


@huey.task()
def train_site(job: dict[str, Any]) -> dict[str, Any]:
    from understudy.training.pipeline import run_training_job

    result = run_training_job(
        job["site_id"],
        job["snapshot"],
        job["out_dir"],
        job["config"],
        validator=job.get("validator"),
        progress=False,
        control=job.get("control"),
    )
    _report(result)
    return {k: v for k, v in result.items() if k != "traceback"}


@huey.periodic_task(crontab(minute=f"*/{max(1, settings.train_check_minutes)}"))
def schedule_training() -> list[str]:
    from understudy.operations.client import AdminClient, OperationError
    from understudy.training.jobs import scheduling_rules

    access = AdminClient(settings)
    if not access.proxy:
        log.info("no proxy running on %s; nothing scheduled", settings.data_dir)
        return []
    try:
        jobs = access.training_jobs_for_candidates(scheduling_rules(settings))
    except OperationError as exc:
        log.warning("could not ask the proxy for training candidates: %s", exc)
        return []
    for job in jobs:
        log.info("training %s: %s", job.get("site_name") or job["site_id"], job.get("reason"))
        train_site(job)
    return [job["site_id"] for job in jobs]


def _report(result: dict[str, Any]) -> None:
    from understudy.operations.client import AdminClient, OperationError

    access = AdminClient(settings)
    if not access.proxy:
        log.warning("no proxy running; %s stays in %s for the next start", result.get("adapter_path"), "result.json")
        return
    try:
        access.register_with_proxy(result)
    except OperationError as exc:
        log.warning("the proxy did not take the result (%s); it stays in result.json", exc)
