"""Preparing training jobs and registering their results, on whichever side owns the store.

The proxy (admin API) or the CLI (no proxy running) calls these with the open store; the
worker only ever sees the job dict (a Parquet snapshot path, an output directory, a
TrainConfig) and returns a result dict.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from routing.registry import list_versions, register_version
from routing.validators import default_registry
from training.pipeline import RESULT_FILENAME
from training.quiet import QuietWindow
from training.snapshots import site_examples, write_snapshot
from understudy.settings import Settings
from understudy.store import Store

REGISTERED_MARKER = "registered"  # written beside result.json once the store has it
MIN_EXAMPLES = 2  # a job needs something to train on and something to verify against


class NotEnoughData(ValueError):
    pass


def prepare_job(store: Store, settings: Settings, site_ref: str, config_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Snapshot the site's filtered examples and describe the job that trains on them."""
    site = store.resolve_site(site_ref)
    row = store.cursor().execute("SELECT tool_names FROM sites WHERE id = ?", [site.id]).fetchone()
    if row and row[0]:
        raise NotEnoughData(f"site {site.name} uses tools; local models do not learn tool loops")
    examples, counts = site_examples(store.cursor(), site.id, filtered=True, validator_for=default_registry().for_response_format)
    if len(examples) < MIN_EXAMPLES:
        raise NotEnoughData(f"site {site.name} has {len(examples)} usable examples; at least {MIN_EXAMPLES} are needed")
    snapshot = write_snapshot(examples, settings.snapshots_dir, site.id)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    response_format = examples[0]["response_format"]
    config = {"base_gguf": settings.resolved_base_gguf(), **settings.train_config, **(config_overrides or {})}
    return {"site_id": site.id, "site_name": site.name, "snapshot": str(snapshot),
            "out_dir": str(settings.adapters_dir / site.id / f"job-{stamp}"), "config": config,
            "response_format": response_format, "examples": counts.to_dict()}


def register_result(store: Store, result: dict[str, Any]) -> dict[str, Any]:
    version = register_version(store, result["site_id"], result)
    out_dir = Path(result["adapter_path"]).parent if result.get("adapter_path") else None
    if out_dir is not None and out_dir.exists():
        (out_dir / REGISTERED_MARKER).write_text(str(version.version))
    return version.to_dict()


def register_pending_results(store: Store, settings: Settings) -> list[dict[str, Any]]:
    """Results a worker finished while no proxy was running: register them now."""
    registered = []
    for result_file in sorted(settings.adapters_dir.glob(f"*/*/{RESULT_FILENAME}")):
        if (result_file.parent / REGISTERED_MARKER).exists():
            continue
        result = json.loads(result_file.read_text())
        registered.append(register_result(store, result))
        (result_file.parent / REGISTERED_MARKER).write_text("1")
    return registered


def scheduling_rules(settings: Settings) -> dict[str, Any]:
    """The worker's scheduling settings, sent with its request for candidates."""
    return {"quiet_hours": settings.quiet_hours, "quiet_max_rpm": settings.quiet_max_rpm,
            "quiet_rate_window_min": settings.quiet_rate_window_min, "min_examples": settings.train_min_examples}


def training_candidates(store: Store, rules: dict[str, Any], now: datetime | None = None) -> tuple[list[str], str]:
    """Sites with enough new examples since their last version, if the proxy is quiet now."""
    now = now or datetime.now(timezone.utc)
    window = QuietWindow.parse(rules.get("quiet_hours"), rules.get("quiet_max_rpm"), rules.get("quiet_rate_window_min") or 5)
    min_examples = int(rules.get("min_examples") or 50)
    cur = store.cursor()
    recent = cur.execute("SELECT count(*) FROM calls WHERE ts >= ?",
                         [now - timedelta(minutes=window.rate_window_minutes)]).fetchone()[0]
    quiet, why = window.is_quiet(now.astimezone(), recent)
    if not quiet:
        return [], why
    candidates = []
    for site in store.site_records():
        versions = list_versions(store, site.id)
        since = max((v.created_at for v in versions), default=None)
        query = ("SELECT count(*) FROM calls WHERE site_id = ? AND status = 200 AND served_by = 'upstream' "
                 "AND coalesce(valid, true)")
        params: list[Any] = [site.id]
        if since:
            query += " AND ts > ?"
            params.append(since)
        tools = cur.execute("SELECT tool_names FROM sites WHERE id = ?", [site.id]).fetchone()[0]
        if not tools and cur.execute(query, params).fetchone()[0] >= min_examples:
            candidates.append(site.id)
    return candidates, why
