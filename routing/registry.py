"""The model registry: versions per site, their status, and every state change with its reason.

Writes go through the store (in the proxy's process, or the CLI's when no proxy runs);
every change is also an `audit` row, so reports can say why a site is where it is.

A version's status:
- `ready`: verified (its GGUF adapter reproduced the trained output) and not worse than the
  site's current version on the held-out set; it becomes the site's active version and the
  site enters shadow (`policy.on_new_version`).
- `rejected`: verified but worse than the current version; kept on disk, never activated.
- `failed`: training, export or verification failed; kept for inspection, never activated.
- `retired`: was active, replaced or rolled back.
- `inconclusive`: shadowed `max_shadow_samples` without being promoted or rejected
  (`policy.decide`); the site went back to learning. Kept on disk and usable: an operator may
  still promote or pin it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from understudy.routing.policy import Decision, SiteState, Verdict, on_new_version
from understudy.store import SiteRecord, Store

USABLE_STATUSES = ("ready", "active", "retired", "inconclusive")  # verified versions; failed/rejected are never served
USABLE_SQL = "(" + ", ".join(f"'{status}'" for status in USABLE_STATUSES) + ")"  # for `status IN` clauses

# Negative controls a user can shadow to see the policy reject them (`understudy train --control`).
CONTROLS = {
    "base": "the bare base model, no adapter",
    "shuffled": "trained on answers to other requests of the site",
}
# Held-out metrics compared between a new version and the current one, in order of trust:
# the task validator's verdict beats schema validity beats exact match.
_COMPARED_METRICS = ("validator_pass_rate", "parse_valid_rate", "exact_match_rate")


@dataclass
class VersionRecord:
    site_id: str
    version: int
    status: str
    base_model: str | None
    base_gguf: str | None
    adapter_path: str | None
    dataset_snapshot: str | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    note: str | None
    created_at: str
    control: str | None = None  # base | shuffled: a negative control, not a candidate

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def list_versions(store: Store, site_id: str) -> list[VersionRecord]:
    rows = (
        store.cursor()
        .execute(
            """SELECT site_id, version, status, base_model, base_gguf, adapter_path, dataset_snapshot, config, metrics,
                  note, created_at, control FROM model_versions WHERE site_id = ? ORDER BY version""",
            [site_id],
        )
        .fetchall()
    )
    return [_record(row) for row in rows]


def get_version(store: Store, site_id: str, version: int) -> VersionRecord | None:
    return next((v for v in list_versions(store, site_id) if v.version == version), None)


def register_version(store: Store, site_ref: str, result: dict[str, Any], *, actor: str = "worker") -> VersionRecord:
    """Record a training job's result as the site's next version and, if it earned it, activate it."""
    site = store.resolve_site(site_ref)
    versions = list_versions(store, site.id)
    number = max((v.version for v in versions), default=0) + 1
    metrics = result.get("metrics") or {}
    current = next((v for v in versions if v.version == site.active_version), None)
    control = result.get("control")
    if result.get("error") or not result.get("verified"):
        status, note = "failed", result.get("error") or "GGUF adapter did not reproduce the trained output"
    elif control:
        # A negative control always enters shadow: it exists to show the policy rejects it.
        status, note = "ready", f"{control} control: {CONTROLS.get(control, 'a negative control')}"
    else:
        # The bar is the active *trained* version: a control is never a candidate to keep (a
        # shuffled control parses every held-out answer, so it would reject a first version
        # that parses fewer, as the learning curve's `rate_difficulty` showed).
        bar = current if current is not None and not current.control else None
        worse = _worse_than(metrics, bar.metrics if bar else None)
        status, note = ("rejected", worse) if worse else ("ready", None)
    cur = store.cursor()
    cur.execute(
        """INSERT INTO model_versions (site_id, version, status, base_model, base_gguf, adapter_path, dataset_snapshot,
                                       config, metrics, note, created_at, control)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [
            site.id,
            number,
            status,
            result.get("base_model"),
            result.get("base_gguf"),
            result.get("adapter_path"),
            result.get("dataset_snapshot"),
            json.dumps(result.get("config") or {}),
            json.dumps(metrics),
            note,
            _now(),
            control,
        ],
    )
    audit(store, site.id, "version", {"version": number, "status": status, "note": note}, actor)
    if status == "ready":
        if current is not None and current.status == "active":
            set_version_status(store, site.id, current.version, "retired")
        set_version_status(store, site.id, number, "active")
        apply_decision(store, site, on_new_version(site.state, site.pinned), active_version=number, actor=actor)
    version = get_version(store, site.id, number)
    assert version is not None  # inserted above
    return version


class StaleDecision(Exception):
    """The site changed after the decision was computed (an operator acted meanwhile)."""

    def __init__(self, current: SiteRecord):
        super().__init__(f"now state {current.state}, version {current.active_version}, pinned {current.pinned}")
        self.current = current


def apply_decision(
    store: Store,
    site: SiteRecord,
    decision: Decision,
    *,
    active_version: int | None = None,
    actor: str = "policy",
    expected: SiteRecord | None = None,
) -> SiteRecord:
    """Move a site to the decision's state (and version), with an audit row giving the reason.

    With `expected` (the record the decision was computed from) the write is a compare-and-set:
    when the stored state, version or pin differ, nothing is written and StaleDecision says what
    the site is now."""
    version = site.active_version if active_version is None else active_version
    new_state = decision.new_state.value
    threshold = decision.threshold if decision.new_state is SiteState.PARTIAL else None
    if new_state == site.state and version == site.active_version:
        if expected is not None and not _unchanged(store.resolve_site(site.id), expected):
            raise StaleDecision(store.resolve_site(site.id))
        return site
    if expected is None:
        store.cursor().execute(
            "UPDATE sites SET state = ?, active_version = ?, state_since = ?, partial_threshold = ? WHERE id = ?",
            [new_state, version, _now(), threshold, site.id],
        )
    else:
        # One conditional UPDATE, so the compare-and-set holds across processes sharing the store.
        written = (
            store.cursor()
            .execute(
                "UPDATE sites SET state = ?, active_version = ?, state_since = ?, partial_threshold = ? WHERE id = ? "
                "AND state IS NOT DISTINCT FROM ? AND active_version IS NOT DISTINCT FROM ? "
                "AND pinned IS NOT DISTINCT FROM ? RETURNING id",
                [
                    new_state,
                    version,
                    _now(),
                    threshold,
                    site.id,
                    expected.state,
                    expected.active_version,
                    expected.pinned,
                ],
            )
            .fetchall()
        )
        if not written:
            raise StaleDecision(store.resolve_site(site.id))
    detail = {"from": site.state, "to": new_state, "version": version, "reason": decision.reason}
    if decision.verdict is not None:
        detail["verdict"] = decision.verdict.value
    if threshold is not None:
        detail["threshold"] = threshold
    if decision.verdict is Verdict.INCONCLUSIVE and version is not None:
        # retired undecided: kept on disk (an operator may still promote it), never shadowed again by itself
        set_version_status(store, site.id, version, "inconclusive")
    audit(store, site.id, "state", detail, actor)
    return store.resolve_site(site.id)


def partial_threshold(store: Store, site_id: str) -> float | None:
    """The confidence a site in state `partial` serves its local answers at (None otherwise)."""
    row = store.cursor().execute("SELECT state, partial_threshold FROM sites WHERE id = ?", [site_id]).fetchone()
    return row[1] if row is not None and row[0] == SiteState.PARTIAL.value else None


def _unchanged(current: SiteRecord, expected: SiteRecord) -> bool:
    return (current.state, current.active_version, current.pinned) == (
        expected.state,
        expected.active_version,
        expected.pinned,
    )


def audit(store: Store, site_id: str, action: str, detail: dict[str, Any], actor: str) -> None:
    store.cursor().execute(
        "INSERT INTO audit (ts, site_id, action, detail, actor) VALUES (?, ?, ?, ?, ?)",
        [_now(), site_id, action, json.dumps(detail), actor],
    )


def set_version_status(store: Store, site_id: str, version: int, status: str) -> None:
    store.cursor().execute(
        "UPDATE model_versions SET status = ? WHERE site_id = ? AND version = ?", [status, site_id, version]
    )


def _worse_than(new: dict[str, Any], current: dict[str, Any] | None) -> str | None:
    """Why the new version is worse than the current one on held-out data, or None."""
    if not current:
        return None
    new_heldout, old_heldout = new.get("heldout") or {}, current.get("heldout") or {}
    for name in _COMPARED_METRICS:
        a, b = new_heldout.get(name), old_heldout.get(name)
        if a is not None and b is not None and a != b:
            return None if a > b else f"held-out {name} {a:.2f} < current {b:.2f}"
    return None


def _record(row: tuple) -> VersionRecord:
    site_id, version, status, base_model, base_gguf, adapter, snapshot, config, metrics, note, created, control = row
    return VersionRecord(
        site_id,
        version,
        status,
        base_model,
        base_gguf,
        adapter,
        snapshot,
        json.loads(config) if config else {},
        json.loads(metrics) if metrics else {},
        note,
        created.isoformat() if isinstance(created, datetime) else str(created),
        control,
    )


def _now() -> datetime:
    return datetime.now(UTC)
