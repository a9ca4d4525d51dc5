"""Preparing training jobs and registering their results, on whichever side owns the store.

The proxy (admin API) or the CLI (no proxy running) calls these with the open store; the
worker only ever sees the job dict (a Parquet snapshot path, an output directory, a
TrainConfig) and returns a result dict.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from understudy.routing.policy import SiteState, Verdict
from understudy.routing.registry import CONTROLS, list_versions, register_version
from understudy.training import site_prompt
from understudy.training.pipeline import RESULT_FILENAME
from understudy.training.quiet import QuietWindow
from understudy.training.snapshots import COMPLETE_ANSWER, site_examples, write_snapshot
from understudy.settings import Settings
from understudy.store import SiteRecord, Store
from understudy.validators import ValidatorRegistry, site_validator_for, site_validator_reference

log = logging.getLogger("understudy.training_jobs")
REGISTERED_MARKER = "registered"  # written beside result.json once the store has it
MIN_EXAMPLES = 2  # a job needs something to train on and something to verify against


class NotEnoughData(ValueError):
    pass


class PathOutsideDataDir(ValueError):
    """A training result names a file outside the data dir; refused, never registered."""

    def __init__(self, field: str, path: str, data_dir: Path):
        self.field = field
        super().__init__(f"{field} {path} is outside the data dir {data_dir}: adapters and snapshots are "
                         "registered only from inside it")


# Result fields naming files the proxy later opens (the adapter is loaded into llama.cpp).
CONFINED_RESULT_PATHS = ("adapter_path", "dataset_snapshot")


def confine_result(result: dict[str, Any], settings: Settings) -> None:
    """Raise PathOutsideDataDir unless every file the result names lies inside the data dir."""
    for name in CONFINED_RESULT_PATHS:
        value = result.get(name)
        if value and not settings.within_data_dir(str(value)):
            raise PathOutsideDataDir(name, str(value), settings.data_dir)


def prepare_job(store: Store, settings: Settings, site_ref: str, config_overrides: dict[str, Any] | None = None,
                control: str | None = None) -> dict[str, Any]:
    """Snapshot the site's filtered examples and describe the job that trains on them.

    `control="shuffled"` pairs every prompt with the answer to another request of the site: a
    negative control whose answers are valid but answer the wrong request.
    """
    if control is not None and control not in CONTROLS:
        raise ValueError(f"control must be one of {sorted(CONTROLS)}, not {control!r}")
    site = store.resolve_site(site_ref)
    row = store.cursor().execute("SELECT tool_names FROM sites WHERE id = ?", [site.id]).fetchone()
    if row and row[0]:
        raise NotEnoughData(f"site {site.name} uses tools; local models do not learn tool loops")
    registry = ValidatorRegistry(settings.validators)
    examples, counts = site_examples(store.cursor(), site.id, filtered=True,
                                     validator_for=site_validator_for(store, site.id, registry))
    if len(examples) < MIN_EXAMPLES:
        raise NotEnoughData(f"site {site.name} has {len(examples)} usable examples; at least {MIN_EXAMPLES} are needed")
    if control == "shuffled":
        examples = answers_to_other_requests(examples)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    response_format = examples[0]["response_format"]
    # Compact prompts unless the site's policy asks for the full rendering or its examples do not
    # share one static part (training.site_prompt).
    prompt = site_prompt.choose(examples, marker=site.id, mode=store.site_policy(site.id).get("prompt", site_prompt.COMPACT))
    job = {"site_id": site.id, "site_name": site.name, "out_dir": str(settings.adapters_dir / site.id / f"job-{stamp}"),
           "config": {"base_gguf": settings.resolved_base_gguf(), **settings.train_config, "prompt": prompt.to_dict(),
                      **(config_overrides or {})},
           "response_format": response_format, "examples": counts.to_dict(), "control": control,
           "validator": site_validator_reference(store, site.id, response_format, registry)}
    if control != "base":
        job["snapshot"] = str(write_snapshot(examples, settings.snapshots_dir, site.id))
    return job


def answers_to_other_requests(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each example's completion replaced by one given to a different prompt (a derangement).

    Rotating by one over the examples in order gives every prompt another prompt's answer;
    where two neighbours had the same answer the rotation goes on to the next different one.
    """
    answers = [e["completion"] for e in examples]
    out = []
    for i, example in enumerate(examples):
        other = next((answers[(i + k) % len(answers)] for k in range(1, len(answers))
                      if answers[(i + k) % len(answers)] != example["completion"]), None)
        if other is not None:
            out.append({**example, "completion": other})
    if len(out) < MIN_EXAMPLES:
        raise NotEnoughData("the site's answers are all alike: no answer to another request to train on")
    return out


def base_control_result(job: dict[str, Any]) -> dict[str, Any]:
    """The result that registers the bare base model (no adapter) as a version: the base control."""
    return {"site_id": job["site_id"], "control": "base", "verified": True, "adapter_path": None,
            "base_model": job["config"].get("base_gguf"), "base_gguf": job["config"].get("base_gguf"),
            "config": job["config"], "metrics": {}, "error": None, "dataset_snapshot": None}


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
        try:
            confine_result(result, settings)
        except PathOutsideDataDir as exc:  # left unregistered (and said so), like a failed job
            log.warning("not registering %s: %s", result_file, exc)
            continue
        registered.append(register_result(store, result))
        (result_file.parent / REGISTERED_MARKER).write_text("1")
    return registered


def scheduling_rules(settings: Settings) -> dict[str, Any]:
    """The worker's scheduling settings, sent with its request for candidates."""
    return {"quiet_hours": settings.quiet_hours, "quiet_max_rpm": settings.quiet_max_rpm,
            "quiet_rate_window_min": settings.quiet_rate_window_min, "min_examples": settings.train_min_examples,
            "growth_factor": settings.train_growth_factor}


# The verdicts on a version after which the site needs another one.
RETRAIN_VERDICTS = frozenset(v.value for v in (Verdict.REJECTED, Verdict.INCONCLUSIVE, Verdict.DEMOTED))


def retraining_reason(store: Store, site: SiteRecord, min_examples: int, growth_factor: float) -> str | None:
    """Why the site should get a new version now, or None. The rules, in order:

    - no trained version yet, and at least `min_examples` usable examples: its first version;
    - the last trained version failed, or the policy rejected it, retired it inconclusive or
      demoted it (drift), and `min_examples` usable examples arrived since: a version trained on
      the same data would be the same version, so new data is what it waits for;
    - the usable examples have grown `growth_factor` times since the last version was
      registered: a snapshot twice the size trains a better version (a promoted site keeps learning).

    Otherwise nothing: a site is not retrained every few examples whatever its state (a CPU job
    takes minutes), and controls (`understudy train --control`) never count as trained versions;
    while a control shadows, nothing is trained over it (it is decided, or retired inconclusive,
    within `max_shadow_samples`).
    """
    cur = store.cursor()
    site_id = site.id
    versions = list_versions(store, site_id)
    active = next((v for v in versions if v.version == site.active_version), None)
    if active is not None and active.control and site.state == SiteState.SHADOW.value:
        return None
    usable = f"SELECT count(*) FROM calls WHERE site_id = ? AND {COMPLETE_ANSWER} AND coalesce(valid, true)"

    def usable_since(ts: Any = None) -> int:
        return cur.execute(usable + (" AND ts > ?" if ts else ""), [site_id, *([ts] if ts else [])]).fetchone()[0]

    now = usable_since()
    trained = [v for v in versions if not v.control]
    if not trained:
        return f"first version: {now} usable examples" if now >= min_examples else None
    last = trained[-1]
    at_last = now - usable_since(last.created_at)
    verdict = _last_verdict(store, site_id, last.version)
    if last.status == "failed" or verdict:
        what = "failed" if last.status == "failed" else verdict["verdict"]
        new = usable_since(verdict["ts"] if verdict else last.created_at)
        if new >= min_examples:
            return f"v{last.version} {what}: {new} new usable examples since, {now} in all"
        return None
    if at_last > 0 and now >= growth_factor * at_last:
        return f"usable examples grew {at_last} -> {now} (x{now / at_last:.1f} >= x{growth_factor:g}) since v{last.version}"
    return None


def _last_verdict(store: Store, site_id: str, version: int) -> dict[str, Any] | None:
    """The newest policy verdict on `version` calling for a new one ({"verdict", "ts"}), unless a later
    state change (a promotion after a demotion, an operator's rollback or pin) superseded it."""
    rows = store.cursor().execute(
        "SELECT ts, detail FROM audit WHERE site_id = ? AND action = 'state' ORDER BY ts DESC LIMIT 20",
        [site_id]).fetchall()
    for ts, detail in rows:
        detail = json.loads(detail) if isinstance(detail, str) else detail
        if detail.get("version") != version:
            return None
        verdict = detail.get("verdict")
        if verdict in RETRAIN_VERDICTS:
            return {"verdict": verdict, "ts": ts}
        if verdict or detail.get("to") == "learning":  # promoted since, or rolled back by hand
            return None
    return None


def training_candidates(store: Store, rules: dict[str, Any], now: datetime | None = None
                        ) -> tuple[list[tuple[str, str]], str]:
    """(site id, why) for each site that should train now, if the proxy is quiet; and the window's why."""
    now = now or datetime.now(timezone.utc)
    window = QuietWindow.parse(rules.get("quiet_hours"), rules.get("quiet_max_rpm"), rules.get("quiet_rate_window_min") or 5)
    min_examples = int(rules.get("min_examples") or 50)
    growth_factor = float(rules.get("growth_factor") or 2.0)
    if growth_factor <= 1.0:
        raise ValueError("growth_factor must be > 1")
    cur = store.cursor()
    recent = cur.execute("SELECT count(*) FROM calls WHERE ts >= ?",
                         [now - timedelta(minutes=window.rate_window_minutes)]).fetchone()[0]
    quiet, why = window.is_quiet(now.astimezone(), recent)
    if not quiet:
        return [], why
    candidates = []
    for site in store.site_records():
        if cur.execute("SELECT tool_names FROM sites WHERE id = ?", [site.id]).fetchone()[0]:
            continue  # local models do not learn tool loops
        reason = retraining_reason(store, site, min_examples, growth_factor)
        if reason:
            candidates.append((site.id, reason))
    return candidates, why
