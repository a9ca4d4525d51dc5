"""Preparing training jobs and registering their results, on whichever side owns the store.

The proxy (admin API) or the CLI (no proxy running) calls these with the open store; the
worker only ever sees the job dict (a Parquet snapshot path, an output directory, a
TrainConfig) and returns a result dict.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from understudy.inference import site_prompt
from understudy.routing.policy import SiteState, Verdict, pinned_state
from understudy.routing.registry import CONTROLS, audit, list_versions, register_version
from understudy.settings import Settings
from understudy.store import SiteRecord, Store
from understudy.training.pipeline import RESULT_FILENAME
from understudy.training.quiet import QuietWindow
from understudy.training.snapshots import COMPLETE_ANSWER, site_examples, write_snapshot
from understudy.validators import ValidatorRegistry, site_validator_for, site_validator_reference

log = logging.getLogger("understudy.training.jobs")
REGISTERED_MARKER = "registered"  # written beside result.json once the store has it
MIN_EXAMPLES = 2  # a job needs something to train on and something to verify against


class NotEnoughData(ValueError):
    pass


class PathOutsideDataDir(ValueError):
    """A training result names a file outside the data dir; refused, never registered."""

    def __init__(self, field: str, path: str, data_dir: Path):
        self.field = field
        super().__init__(
            f"{field} {path} is outside the data dir {data_dir}: adapters and snapshots are "
            "registered only from inside it"
        )


# Result fields naming files the proxy later opens (the adapter is loaded into llama.cpp).
CONFINED_RESULT_PATHS = ("adapter_path", "dataset_snapshot")


def confine_result(result: dict[str, Any], settings: Settings) -> None:
    """Raise PathOutsideDataDir unless every file the result names lies inside the data dir."""
    for name in CONFINED_RESULT_PATHS:
        value = result.get(name)
        if value and not settings.within_data_dir(str(value)):
            raise PathOutsideDataDir(name, str(value), settings.data_dir)


def prepare_job(
    store: Store,
    settings: Settings,
    site_ref: str,
    config_overrides: dict[str, Any] | None = None,
    control: str | None = None,
) -> dict[str, Any]:
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
    examples, counts = site_examples(
        store.cursor(), site.id, filtered=True, validator_for=site_validator_for(store, site.id, registry)
    )
    if len(examples) < MIN_EXAMPLES:
        raise NotEnoughData(f"site {site.name} has {len(examples)} usable examples; at least {MIN_EXAMPLES} are needed")
    if control == "shuffled":
        examples = answers_to_other_requests(examples)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    response_format = examples[0]["response_format"]
    # Compact prompts unless the site's policy asks for the full rendering or its examples do not
    # share one static part (inference.site_prompt).
    prompt = site_prompt.choose(
        examples, marker=site.id, mode=store.site_policy(site.id).get("prompt", site_prompt.COMPACT)
    )
    job = {
        "site_id": site.id,
        "site_name": site.name,
        "out_dir": str(settings.adapters_dir / site.id / f"job-{stamp}"),
        "config": {
            "base_gguf": settings.resolved_base_gguf(),
            **settings.train_config,
            "prompt": prompt.to_dict(),
            **(config_overrides or {}),
        },
        "response_format": response_format,
        "examples": counts.to_dict(),
        "control": control,
        "validator": site_validator_reference(store, site.id, response_format, registry),
    }
    if control != "base":
        job["snapshot"] = str(write_snapshot(examples, settings.snapshots_dir, site.id))
    return job


def answers_to_other_requests(examples: list[dict[str, Any]], *, seed: int = 0) -> list[dict[str, Any]]:
    """Each example's completion replaced by the teacher's answer to another request, drawn at random.

    A negative control must answer independently of its request, so its answers cannot come from
    the example's neighbours in time: the teacher's second answer to a request (a self-check) is
    recorded right after its first, and workloads come in runs of like requests (the learning
    curve's games play in step). Rotating by one in time order, as this once did, gave a third of
    `Level`'s shuffled examples an answer to that very request. Instead the examples are laid on
    one random cycle (seeded, so the snapshot is reproducible) and each takes the answer of the
    next example along it that the teacher never gave to its own request (so never an answer of
    an example with the same request).
    """
    requests = [json.dumps(e["messages"], sort_keys=True) for e in examples]
    answers_to: dict[str, set[str]] = {}
    for request, example in zip(requests, examples):
        answers_to.setdefault(request, set()).add(example["completion"])
    cycle = list(range(len(examples)))
    random.Random(seed).shuffle(cycle)
    position = {index: at for at, index in enumerate(cycle)}
    out = []
    for i, example in enumerate(examples):
        along = (cycle[(position[i] + k) % len(cycle)] for k in range(1, len(cycle)))
        other = next(
            (examples[j]["completion"] for j in along if examples[j]["completion"] not in answers_to[requests[i]]),
            None,
        )
        if other is not None:
            out.append({**example, "completion": other})
    if len(out) < MIN_EXAMPLES:
        raise NotEnoughData("the site's answers are all alike: no answer to another request to train on")
    return out


def base_control_result(job: dict[str, Any]) -> dict[str, Any]:
    """The result that registers the bare base model (no adapter) as a version: the base control."""
    return {
        "site_id": job["site_id"],
        "control": "base",
        "verified": True,
        "adapter_path": None,
        "base_model": job["config"].get("base_gguf"),
        "base_gguf": job["config"].get("base_gguf"),
        "config": job["config"],
        "metrics": {},
        "error": None,
        "dataset_snapshot": None,
    }


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
    return {
        "quiet_hours": settings.quiet_hours,
        "quiet_max_rpm": settings.quiet_max_rpm,
        "quiet_rate_window_min": settings.quiet_rate_window_min,
        "min_examples": settings.train_min_examples,
        "growth_factor": settings.train_growth_factor,
    }


# The verdicts on a version after which the site needs another one.
RETRAIN_VERDICTS = frozenset(v.value for v in (Verdict.REJECTED, Verdict.INCONCLUSIVE, Verdict.DEMOTED))


def retraining_reason(store: Store, site: SiteRecord, min_examples: int, growth_factor: float) -> str | None:
    """Why the site should get a new version now, or None (`retraining_status` says why not)."""
    due, why = retraining_status(store, site, min_examples, growth_factor)
    return why if due else None


def retraining_status(store: Store, site: SiteRecord, min_examples: int, growth_factor: float) -> tuple[bool, str]:
    """(due, why): whether the site should get a new version now, and why or why not. The rules, in order:

    - no trained version yet, and at least `min_examples` usable examples: its first version;
    - the last trained version failed, or the policy rejected it, retired it inconclusive or
      demoted it (drift), and `min_examples` usable examples arrived since: a version trained on
      the same data would be the same version, so new data is what it waits for;
    - the usable examples have grown `growth_factor` times since the last version was
      registered: a snapshot twice the size trains a better version (a promoted site keeps learning),
      once that version is decided: nothing is trained over a version while it shadows undecided.

    Never while the site is pinned to upstream (a new version would not even shadow), and not while
    a job of the site is queued or running (`pending_job`).

    Otherwise nothing: a site is not retrained every few examples whatever its state (a CPU job
    takes minutes), and controls (`understudy train --control`) never count as trained versions;
    while a control or a version shadows undecided, nothing is trained over it (it is decided, or
    retired inconclusive, within `max_shadow_samples`).
    """
    cur = store.cursor()
    site_id = site.id
    if pinned_state(site.pinned) is SiteState.LEARNING:  # a new version would never shadow
        return False, f"never while pinned to {site.pinned} (`understudy unpin` resumes training)"
    pending = pending_job(store, site_id)
    if pending is not None:
        return (
            False,
            f"waiting: a job started {pending['ts']:%Y-%m-%d %H:%M} is queued or running ({pending['reason']})",
        )
    versions = list_versions(store, site_id)
    active = next((v for v in versions if v.version == site.active_version), None)
    if active is not None and active.control and site.state == SiteState.SHADOW.value:
        return False, f"waiting: the {active.control} control v{active.version} is shadowing until it is decided"
    usable = f"SELECT count(*) FROM calls WHERE site_id = ? AND {COMPLETE_ANSWER} AND coalesce(valid, true)"

    def usable_since(ts: Any = None) -> int:
        return cur.execute(usable + (" AND ts > ?" if ts else ""), [site_id, *([ts] if ts else [])]).fetchone()[0]

    now = usable_since()
    trained = [v for v in versions if not v.control]
    if not trained:
        if now >= min_examples:
            return True, f"first version: {now} usable examples"
        return False, f"waiting: {now} of {min_examples} usable examples for a first version"
    last = trained[-1]
    at_last = now - usable_since(last.created_at)
    verdict = _last_verdict(store, site_id, last.version)
    if last.status == "failed" or verdict:
        what = verdict["verdict"] if verdict and last.status != "failed" else "failed"
        new = usable_since(verdict["ts"] if verdict else last.created_at)
        if new >= min_examples:
            return True, f"v{last.version} {what}: {new} new usable examples since, {now} in all"
        return False, f"waiting: v{last.version} {what}; {new} of {min_examples} new usable examples since"
    if site.state == SiteState.SHADOW.value and active is not None and not site.pinned:
        # Growth comes fastest while a version shadows (a free teacher answers every shadowed call
        # twice), so a small first snapshot doubled before its version had its samples: a version
        # trained on 60 examples gave way to one on 139 after 27 samples, and that one would have
        # too. The shadowing version (the last one, or an older one an operator shadowed again) is
        # decided, or retired inconclusive, within max_shadow_samples; not while a pin to a version
        # holds the site's state, so there the growth rule goes on.
        trained_on = (
            f"trained on {at_last} usable examples"
            if active.version == last.version
            else f"v{last.version} on {at_last}"
        )
        return False, f"waiting: v{active.version} is shadowing until it is decided; {trained_on}, {now} now"
    if at_last > 0 and now >= growth_factor * at_last:
        return True, (
            f"usable examples grew {at_last} -> {now} (x{now / at_last:.1f} >= x{growth_factor:g}) "
            f"since v{last.version}"
        )
    return False, (
        f"waiting: v{last.version} {last.status}, trained on {at_last} usable examples; {now} now, "
        f"a new version at {max(1, int(growth_factor * at_last + 0.999999))} (x{growth_factor:g})"
    )


# A job whose worker died never writes its result; after this long the scheduler stops waiting for it.
JOB_GIVEN_UP_AFTER = timedelta(hours=24)


def job_started(store: Store, job: dict[str, Any], reason: str, actor: str) -> None:
    """Audit a training job as it is handed to a worker: `understudy jobs` lists it with its reason,
    and the scheduler starts no other job for the site until it has a result (`pending_job`)."""
    key = "scheduled" if actor == "scheduler" else "started"
    audit(store, job["site_id"], "training", {key: reason, "out_dir": job["out_dir"]}, actor)


def manual_reason(job: dict[str, Any]) -> str:
    """The reason `understudy jobs` shows for a job started with `understudy train`."""
    return f"{job['control']} control, `understudy train`" if job.get("control") else "`understudy train`"


def pending_job(store: Store, site_id: str) -> dict[str, Any] | None:
    """The site's newest training job with no result yet ({"ts", "reason", "out_dir"}), unless given up."""
    row = (
        store.cursor()
        .execute(
            "SELECT ts, detail FROM audit WHERE site_id = ? AND action = 'training' ORDER BY ts DESC LIMIT 1", [site_id]
        )
        .fetchone()
    )
    if row is None:
        return None
    ts, detail = row
    detail = json.loads(detail) if isinstance(detail, str) else detail
    out_dir = detail.get("out_dir") if isinstance(detail, dict) else None
    if not out_dir or (Path(out_dir) / RESULT_FILENAME).exists():
        return None
    if datetime.now(UTC) - ts > JOB_GIVEN_UP_AFTER:
        return None
    return {"ts": ts, "reason": detail.get("scheduled") or detail.get("started") or "", "out_dir": out_dir}


def _last_verdict(store: Store, site_id: str, version: int) -> dict[str, Any] | None:
    """The newest policy verdict on `version` calling for a new one ({"verdict", "ts"}), unless a later
    state change superseded it: a promotion after a demotion, or any state change an operator made
    (a promotion by hand, the version shadowed again with `rollback --to`)."""
    rows = (
        store.cursor()
        .execute(
            "SELECT ts, detail, actor FROM audit WHERE site_id = ? AND action = 'state' ORDER BY ts DESC LIMIT 20",
            [site_id],
        )
        .fetchall()
    )
    for ts, detail, actor in rows:
        detail = json.loads(detail) if isinstance(detail, str) else detail
        if detail.get("version") != version or actor != "policy":
            return None  # another version since, or an operator moved the site (promoted, shadowed again)
        verdict = detail.get("verdict")
        if verdict in RETRAIN_VERDICTS:
            return {"verdict": verdict, "ts": ts}
        if verdict or detail.get("to") == "learning":  # promoted since, or rolled back by hand
            return None
    return None


@dataclass(frozen=True)
class _SchedulingRules:
    """The worker's scheduling rules (`scheduling_rules(settings)`), read once for both the
    scheduler (`training_candidates`) and what `understudy jobs` shows (`training_schedule`)."""

    window: QuietWindow
    min_examples: int
    growth_factor: float

    @classmethod
    def parse(cls, rules: dict[str, Any]) -> _SchedulingRules:
        window = QuietWindow.parse(
            rules.get("quiet_hours"), rules.get("quiet_max_rpm"), rules.get("quiet_rate_window_min") or 5
        )
        growth_factor = float(rules.get("growth_factor") or 2.0)
        if growth_factor <= 1.0:
            raise ValueError("growth_factor must be > 1")
        return cls(window, int(rules.get("min_examples") or 50), growth_factor)


def _quiet_now(store: Store, window: QuietWindow, now: datetime) -> tuple[bool, str]:
    """(quiet, why) for the proxy's traffic over the window's rate window up to `now`."""
    recent = (
        store.cursor()
        .execute("SELECT count(*) FROM calls WHERE ts >= ?", [now - timedelta(minutes=window.rate_window_minutes)])
        .fetchone()[0]
    )
    return window.is_quiet(now.astimezone(), recent)


def _uses_tools(store: Store, site_id: str) -> bool:
    return bool(store.cursor().execute("SELECT tool_names FROM sites WHERE id = ?", [site_id]).fetchone()[0])


def training_candidates(
    store: Store, rules: dict[str, Any], now: datetime | None = None
) -> tuple[list[tuple[str, str]], str]:
    """(site id, why) for each site that should train now, if the proxy is quiet; and the window's why."""
    now = now or datetime.now(UTC)
    parsed = _SchedulingRules.parse(rules)
    quiet, why = _quiet_now(store, parsed.window, now)
    if not quiet:
        return [], why
    candidates = []
    for site in store.site_records():
        if _uses_tools(store, site.id):
            continue  # local models do not learn tool loops
        reason = retraining_reason(store, site, parsed.min_examples, parsed.growth_factor)
        if reason:
            candidates.append((site.id, reason))
    return candidates, why


def training_schedule(store: Store, rules: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """What `understudy jobs` shows: the quiet window now, each site's next job (due or not, and why,
    by `retraining_status`), and the most recent jobs the scheduler started (`rules["jobs"]`, 20 by
    default), each with its reason and outcome (queued or running, the version it registered, or
    its error)."""
    now = now or datetime.now(UTC)
    jobs = int(rules.get("jobs") or 20)
    parsed = _SchedulingRules.parse(rules)
    min_examples, growth_factor = parsed.min_examples, parsed.growth_factor
    quiet, why = _quiet_now(store, parsed.window, now)
    cur = store.cursor()
    sites = []
    for site in store.site_records():
        if _uses_tools(store, site.id):
            due, reason = False, "never: the site uses tools (local models do not learn tool loops)"
        else:
            due, reason = retraining_status(store, site, min_examples, growth_factor)
        sites.append(
            {
                "id": site.id,
                "name": site.name,
                "state": site.state,
                "active_version": site.active_version,
                "due": due,
                "reason": reason,
            }
        )
    versions = {
        row[0]: row[1:]
        for row in cur.execute(
            "SELECT adapter_path, version, status, note FROM model_versions WHERE adapter_path IS NOT NULL"
        ).fetchall()
    }
    history = []
    for ts, site_id, name, detail in cur.execute(
        "SELECT a.ts, a.site_id, s.name, a.detail FROM audit a JOIN sites s ON s.id = a.site_id "
        "WHERE a.action = 'training' ORDER BY a.ts DESC LIMIT ?",
        [jobs],
    ).fetchall():
        detail = json.loads(detail) if isinstance(detail, str) else detail
        if not isinstance(detail, dict) or not detail.get("out_dir"):
            continue
        history.append(
            {
                "ts": ts.isoformat() if hasattr(ts, "isoformat") else str(ts),
                "site": site_id,
                "name": name,
                "reason": detail.get("scheduled") or detail.get("started") or "",
                "out_dir": detail["out_dir"],
                "outcome": _job_outcome(Path(detail["out_dir"]), versions),
            }
        )
    return {
        "now": now.isoformat(),
        "quiet": quiet,
        "window": why,
        "rules": {
            "min_examples": min_examples,
            "growth_factor": growth_factor,
            "quiet_hours": rules.get("quiet_hours"),
            "quiet_max_rpm": rules.get("quiet_max_rpm"),
        },
        "sites": sites,
        "jobs": history,
    }


def _job_outcome(out_dir: Path, versions: dict[str, tuple]) -> str:
    """A job's state as its output directory and the registered versions tell it."""
    adapter = str(out_dir / "adapter.gguf")
    if adapter in versions:
        version, status, note = versions[adapter]
        return f"v{version} {status}" + (f": {note}" if note and status in ("failed", "rejected") else "")
    result_file = out_dir / RESULT_FILENAME
    if result_file.exists():
        try:
            result = json.loads(result_file.read_text())
        except (OSError, ValueError):
            return "finished, result unreadable"
        return f"failed: {result['error']}" if result.get("error") else "finished, not registered yet"
    return "queued or running"
