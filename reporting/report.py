"""Shadow-mode reports: what each call site is doing, how well its local model agrees, what it saves.

`build_report` reads the store through a DuckDB cursor it is given (only `understudy.store`
opens the file) and returns one `SiteReport` per site: plain dataclasses
(`reporting.report_model`) whose `to_dict()` is JSON-ready, so the CLI, the `/report` route and
`reporting.report_html` all share one model of the numbers; `reporting.report_text` puts them
in words and prints them with rich.

What the numbers mean
---------------------
- Reported version: the site's `active_version` (the one the policy judges, in shadow or in
  local); without one, the newest version that has shadow results, else the newest version.
- Agreement: mean shadow score of that version over all its comparable samples, with the
  policy's confidence sequence (`routing.sequential`, alpha / 2). Only *comparable* results
  count (`comparable` is false when the upstream answer itself was unusable, so there was
  nothing to agree with); the others are reported as `incomparable`.
- Judgement: exactly what `routing.policy.decide` weighs now (`routing.evidence`): the
  version's agreement and validity difference in its current state, against the teacher's
  self-agreement (`teacher`), with the margin; `bar` is the teacher's mean minus the margin.
- Cascade: the confidence threshold calibrated on the version's shadow samples
  (`routing.cascade`), with the local share and agreement with and without it.
- Calls and local share count the clients' calls only; the proxy's own extra upstream calls
  (drift checks, second answers for the teacher's self-agreement) are `extra_calls`, and their
  cost is part of the upstream spend.
- Latency: p50/p95 (linear interpolation, `quantile_cont`) of `calls.latency_ms` over
  successful (2xx) calls, split by who served them; failed calls are left out because an error
  returned in a few milliseconds says nothing about serving speed. Shadow runs add the local
  model's latency measured beside the upstream (`shadow_results.local_latency_ms`), the only
  local latency there is before a site is promoted.
- Cost: upstream spend is the sum of `cost_usd` over upstream-served calls (fallbacks included:
  they are real spend). Cost saved is local-served calls × the site's mean upstream cost per
  call: what those calls would have cost had the upstream answered them. Upstream calls
  recorded without a cost (their model was missing from the price table then) are priced now
  when a `prices` table is given.
- Fallbacks: upstream-served calls whose error starts with `local fallback:` (the local answer
  was invalid, or below the cascade's confidence threshold, and the upstream answered instead).
- Why: the newest audit entry that explains the routing: one with a recorded `detail.reason`
  (state changes from the policy) or a manual pin / unpin / rollback; with none, what the
  promotion policy would say now (`assessment`).

Time series (for plots) share one bucket width per site, picked so a site's whole history
fits in about `MAX_BUCKETS` buckets; times are Unix seconds (UTC). Agreement over time is the
running mean of each version's comparable scores with its confidence sequence, thinned to at
most `MAX_AGREEMENT_POINTS` points per version.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from understudy.db import Cursor
from understudy.reporting.report_model import (
    AgreementPoint,
    AgreementSeries,
    AgreementSummary,
    AuditEntry,
    CascadeSummary,
    CostPoint,
    CostSummary,
    DrawsSummary,
    JudgementSummary,
    LatencyPoint,
    LatencyStats,
    LatencySummary,
    PartialSummary,
    PolicySummary,
    Prices,
    SiteReport,
    TimeSeries,
    TrafficPoint,
    VersionInfo,
)
from understudy.routing.cascade import calibrate
from understudy.routing.evidence import (
    PAIRED_REFERENCE,
    bar,
    calibration_samples,
    evidence_phase,
    paired_reference,
    partial_samples,
    reference_scores,
    stored_evidence,
    teacher_level,
)
from understudy.routing.partial import PartialEvidence, partial_evidence
from understudy.routing.policy import Bounds, Judgement, PromotionPolicy, SiteState, decide, judge, new_review_evidence
from understudy.routing.review_evidence import review_differences
from understudy.routing.sequential import ConfidenceSequence
from understudy.store import SiteNotFound

FALLBACK_PREFIX = "local fallback:"
MAX_BUCKETS = 96
MAX_AGREEMENT_POINTS = 200
AUDIT_ENTRIES = 5
# Manual actions that explain a site's routing even without a recorded reason.
_EXPLAINING_ACTIONS = frozenset({"pin", "unpin", "rollback", "promote", "demote"})
# Candidate bucket widths in seconds: round numbers a reader recognises on an axis.
_BUCKET_WIDTHS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400, 30 * 86400)
# SQL fragments shared by the queries: who served a call, and which calls say something about speed.
_LOCAL = "served_by LIKE 'local:%'"
_UPSTREAM = "served_by NOT LIKE 'local:%'"
_OK = "status BETWEEN 200 AND 299"
_CLIENT = "coalesce(purpose, 'client') = 'client'"  # not the proxy's own drift / second-answer calls


# ---- building ------------------------------------------------------------------------------


def build_report(
    cur: Cursor,
    site_ref: str | None = None,
    *,
    prices: Prices | None = None,
    policy: PromotionPolicy | None = None,
    audit_limit: int = AUDIT_ENTRIES,
) -> list[SiteReport]:
    """One report per site (or for the site `site_ref` names: id, exact name or unique id prefix).

    `policy` holds the global promotion settings (default `PromotionPolicy()`); a site's own
    overrides in `sites.policy` are layered on top. Raises `SiteNotFound` for an unknown ref.
    """
    base_policy = policy or PromotionPolicy()
    return [
        _site_report(cur, row, _site_policy(base_policy, row[5]), prices, audit_limit)
        for row in _site_rows(cur, site_ref)
    ]


def _site_rows(cur: Cursor, site_ref: str | None) -> list[tuple]:
    # An id or exact name, then a unique id prefix (render_report passes the id `Store.resolve_site`
    # found, which also knows a site's former names and lists candidates on a miss).
    select = "SELECT id, name, state, pinned, active_version, policy, partial_threshold FROM sites"
    if site_ref is None:
        return cur.execute(f"{select} ORDER BY created_at, id").fetchall()
    rows = cur.execute(f"{select} WHERE id = ? OR name = ?", [site_ref, site_ref]).fetchall()
    if not rows:
        rows = cur.execute(f"{select} WHERE starts_with(id, ?)", [site_ref]).fetchall()
    if len(rows) != 1:
        raise SiteNotFound(
            f"no site matches {site_ref!r}" if not rows else f"{site_ref!r} matches {len(rows)} sites; use the id"
        )
    return rows


def _site_policy(base: PromotionPolicy, raw: str | None) -> PromotionPolicy:
    """Global settings with the site's `promotion` overrides, read as `routing.router` reads them.

    A report must render even when a stored override is invalid: then the global settings are
    shown (the router cannot apply that override either).
    """
    overrides = _json(raw)
    promotion = overrides.get("promotion") if isinstance(overrides, dict) else None
    if not isinstance(promotion, dict) or not promotion:
        return base
    try:
        return PromotionPolicy.from_dict(asdict(base), promotion)
    except (TypeError, ValueError):
        return base


def _site_report(
    cur: Cursor, row: tuple, policy: PromotionPolicy, prices: Prices | None, audit_limit: int
) -> SiteReport:
    site_id, name, state, pinned, active_version, _, threshold = row
    versions = _versions(cur, site_id, policy)
    reported = _reported_version(cur, site_id, active_version, versions)
    agreement = _agreement(cur, site_id, reported, policy) if reported is not None else None
    reference = reference_scores(cur, site_id, policy.reference_window)
    evidence = None
    if active_version is not None and state != SiteState.LEARNING.value:
        evidence = stored_evidence(cur, site_id, active_version, state, policy)
    reference_cs = policy.new_reference(paired=evidence is not None and evidence.paired is not None).extend(reference)
    review = (
        new_review_evidence(policy).extend(review_differences(cur, site_id, active_version))
        if active_version is not None
        else None
    )
    judgement = judge(evidence, reference_cs, policy, review) if evidence is not None else None
    partial = None
    if state == SiteState.SHADOW.value and active_version is not None and policy.partial:
        partial = partial_evidence(
            partial_samples(cur, site_id, active_version),
            paired_reference(cur, site_id, PAIRED_REFERENCE),
            teacher_level(reference),
            policy,
        )
    extra_calls = dict(
        cur.execute(
            "SELECT purpose, count(*) FROM calls WHERE site_id = ? AND NOT " + _CLIENT + " GROUP BY purpose", [site_id]
        ).fetchall()
    )

    totals = cur.execute(
        f"""
        SELECT count(*),
               count(*) FILTER (WHERE {_UPSTREAM}),
               count(*) FILTER (WHERE {_LOCAL}),
               count(*) FILTER (WHERE served_by = 'upstream' AND starts_with(error, ?)),
               coalesce(sum(cost_usd) FILTER (WHERE {_UPSTREAM}), 0),
               count(cost_usd) FILTER (WHERE {_UPSTREAM}),
               count(*) FILTER (WHERE {_UPSTREAM} AND {_OK} AND {_CLIENT}),
               quantile_cont(latency_ms, 0.5) FILTER (WHERE {_UPSTREAM} AND {_OK} AND {_CLIENT}),
               quantile_cont(latency_ms, 0.95) FILTER (WHERE {_UPSTREAM} AND {_OK} AND {_CLIENT}),
               count(*) FILTER (WHERE {_LOCAL} AND {_OK}),
               quantile_cont(latency_ms, 0.5) FILTER (WHERE {_LOCAL} AND {_OK}),
               quantile_cont(latency_ms, 0.95) FILTER (WHERE {_LOCAL} AND {_OK})
        FROM calls WHERE site_id = ?
        """,
        [FALLBACK_PREFIX, site_id],
    ).fetchone()
    (n_calls, n_upstream, n_local, fallbacks, spent, priced, up_n, up_p50, up_p95, lo_n, lo_p50, lo_p95) = totals
    n_extra = sum(extra_calls.values())
    n_calls, n_upstream = n_calls - n_extra, n_upstream - n_extra  # the clients' calls

    estimates = _estimated_costs(cur, site_id, prices, bucket_s=None)
    estimated_usd = sum(cost for _, cost, _ in estimates)
    estimated_calls = sum(count for _, _, count in estimates)
    spent = float(spent) + estimated_usd
    priced = int(priced) + estimated_calls
    mean_cost = spent / priced if priced else None

    shadow_lat = _shadow_latency(cur, site_id, reported)
    latency = LatencySummary(
        upstream=LatencyStats(up_n, up_p50, up_p95),
        local=LatencyStats(lo_n, lo_p50, lo_p95),
        shadow_local=shadow_lat[0],
        shadow_upstream=shadow_lat[1],
    )
    cost = CostSummary(
        upstream_spent_usd=spent,
        upstream_priced_calls=priced,
        estimated_calls=estimated_calls,
        mean_upstream_cost_usd=mean_cost,
        local_calls=n_local,
        saved_usd=n_local * mean_cost if mean_cost is not None else None,
    )
    audit = _audit(cur, site_id, audit_limit)
    try:
        assessment = decide(
            state, evidence, reference_cs, policy, pinned, partial=partial, threshold=threshold, review=review
        ).reason
    except ValueError:  # a state this version of the policy does not know: report, don't crash
        assessment = f"unknown state {state!r}"
    return SiteReport(
        id=site_id,
        name=name,
        state=state,
        pinned=pinned,
        active_version=active_version,
        reported_version=reported,
        calls=n_calls,
        upstream_calls=n_upstream,
        local_calls=n_local,
        local_share=n_local / n_calls if n_calls else None,
        fallbacks=fallbacks,
        draws=_draws(cur, site_id, reported),
        extra_calls=extra_calls,
        agreement=agreement,
        teacher=Bounds.of(reference_cs) if reference else None,
        judgement=_judgement_summary(judgement, state, reference, policy) if judgement is not None else None,
        cascade=_cascade(cur, site_id, reported, reference, policy) if reported is not None else None,
        partial=_partial_summary(state, threshold, partial, policy),
        versions=versions,
        latency=latency,
        cost=cost,
        audit=audit,
        assessment=assessment,
        why=_why(cur, site_id, assessment),
        policy=PolicySummary(
            policy.min_samples,
            policy.margin,
            policy.alpha,
            policy.window,
            policy.shadow_sample_rate,
            policy.drift_sample_rate,
            policy.self_agreement_rate,
            policy.cascade,
            policy.max_shadow_samples,
            overrides=overrides if isinstance(overrides := _json(row[5]), dict) else {},
        ),
        series=_series(cur, site_id, policy, prices, mean_cost),
    )


def _partial_summary(
    state: str, threshold: float | None, partial: PartialEvidence | None, policy: PromotionPolicy
) -> PartialSummary | None:
    if state == SiteState.PARTIAL.value:
        return PartialSummary(
            True, threshold, "serving the answers at or above the threshold; the rest upstream", None, None, None, None
        )
    if partial is None:
        return None
    if partial.threshold is None:
        return PartialSummary(False, None, partial.note, None, None, None, None)
    subset = judge(partial.subset, partial.reference, policy)
    return PartialSummary(
        False, partial.threshold, partial.note, partial.share, subset.agreement, subset.reference, subset.validity
    )


def _draws(cur, site_id: str, version: int | None) -> DrawsSummary:
    served, served_mean, fallbacks, fallback_mean = cur.execute(
        f"""SELECT count(*) FILTER (WHERE {_LOCAL} AND local_tries IS NOT NULL),
                   avg(local_tries) FILTER (WHERE {_LOCAL}),
                   count(*) FILTER (WHERE served_by = 'upstream' AND local_tries IS NOT NULL),
                   avg(local_tries) FILTER (WHERE served_by = 'upstream')
            FROM calls WHERE site_id = ?""",
        [site_id],
    ).fetchone()
    shadow, shadow_mean, redrawn = (
        cur.execute(
            "SELECT count(local_tries), avg(local_tries), avg(CASE WHEN local_tries > 1 THEN 1.0 ELSE 0.0 END) "
            "FROM shadow_results WHERE site_id = ? AND version = ? AND local_tries IS NOT NULL",
            [site_id, version],
        ).fetchone()
        if version is not None
        else (0, None, None)
    )
    as_float = lambda v: None if v is None else float(v)  # noqa: E731
    return DrawsSummary(
        int(served),
        as_float(served_mean),
        int(fallbacks),
        as_float(fallback_mean),
        int(shadow),
        as_float(shadow_mean),
        as_float(redrawn),
    )


def _judgement_summary(j: Judgement, state: str, reference: list[float], policy: PromotionPolicy) -> JudgementSummary:
    return JudgementSummary(
        evidence_phase(state), j.agreement, j.reference, j.validity, j.margin, bar(reference, policy), j.paired
    )


def _cascade(
    cur: Cursor, site_id: str, version: int, reference: list[float], policy: PromotionPolicy
) -> CascadeSummary:
    c = calibrate(calibration_samples(cur, site_id, version), bar(reference, policy), policy.min_samples)
    return CascadeSummary(c.threshold, c.bar, c.n, 1.0, c.local_share, c.agreement_without, c.agreement_with)


def _versions(cur: Cursor, site_id: str, policy: PromotionPolicy) -> list[VersionInfo]:
    rows = cur.execute(
        """
        SELECT version, status, base_model, epoch(created_at), note, metrics, control
        FROM model_versions WHERE site_id = ? ORDER BY version
        """,
        [site_id],
    ).fetchall()
    shadow = {s.version: s for s in _agreement_by_version(cur, site_id, policy)}
    out = []
    for version, status, base_model, created, note, metrics, control in rows:
        parsed = _json(metrics)
        out.append(
            VersionInfo(
                version=version,
                status=status,
                base_model=base_model,
                created_at=_iso(created),
                note=note,
                metrics=parsed if isinstance(parsed, dict) else {},
                shadow=shadow.get(version) or AgreementSummary(version, 0, 0, None, 0.0, 1.0, None),
                control=control,
            )
        )
    return out


def _reported_version(cur: Cursor, site_id: str, active: int | None, versions: Sequence[VersionInfo]) -> int | None:
    if active is not None:
        return active
    shadowed = cur.execute("SELECT max(version) FROM shadow_results WHERE site_id = ?", [site_id]).fetchone()[0]
    if shadowed is not None:
        return shadowed
    return versions[-1].version if versions else None


def _agreement_by_version(
    cur: Cursor, site_id: str, policy: PromotionPolicy, version: int | None = None
) -> list[AgreementSummary]:
    rows = cur.execute(
        """
        SELECT version,
               list(score ORDER BY ts, call_id) FILTER (WHERE comparable),
               count(*) FILTER (WHERE NOT comparable),
               avg(CASE WHEN local_valid THEN 1.0 ELSE 0.0 END),
               avg(CASE WHEN upstream_valid THEN 1.0 WHEN NOT upstream_valid THEN 0.0 END)
        FROM shadow_results WHERE site_id = ? AND (CAST(? AS INTEGER) IS NULL OR version = ?)
        GROUP BY version ORDER BY version
        """,
        [site_id, version, version],
    ).fetchall()
    out = []
    for ver, scores, incomparable, valid_rate, upstream_valid_rate in rows:
        scores = [float(x) for x in scores or ()]
        cs = ConfidenceSequence(policy.alpha / 2).extend(scores)
        low, high = cs.bounds
        out.append(
            AgreementSummary(ver, len(scores), incomparable, cs.mean, low, high, valid_rate, upstream_valid_rate)
        )
    return out


def _agreement(cur: Cursor, site_id: str, version: int, policy: PromotionPolicy) -> AgreementSummary:
    found = _agreement_by_version(cur, site_id, policy, version)
    return found[0] if found else AgreementSummary(version, 0, 0, None, 0.0, 1.0, None)


def _shadow_latency(cur: Cursor, site_id: str, version: int | None) -> tuple[LatencyStats, LatencyStats]:
    if version is None:
        return LatencyStats(0, None, None), LatencyStats(0, None, None)
    row = cur.execute(
        """
        SELECT count(local_latency_ms), quantile_cont(local_latency_ms, 0.5), quantile_cont(local_latency_ms, 0.95),
               count(upstream_latency_ms), quantile_cont(upstream_latency_ms, 0.5), quantile_cont(upstream_latency_ms, 0.95)
        FROM shadow_results WHERE site_id = ? AND version = ?
        """,
        [site_id, version],
    ).fetchone()
    return LatencyStats(*row[:3]), LatencyStats(*row[3:])


def _estimated_costs(
    cur: Cursor, site_id: str, prices: Prices | None, bucket_s: int | None
) -> list[tuple[float | None, float, int]]:
    """(bucket, dollars, calls) for successful upstream calls recorded without a cost.

    Prices are linear in tokens, so pricing each model's token *sums* per bucket equals pricing
    every call, without pulling the rows into Python.
    """
    if prices is None:
        return []
    bucket = f"floor(epoch(ts) / {int(bucket_s)}) * {int(bucket_s)}" if bucket_s else "NULL::DOUBLE"
    rows = cur.execute(
        f"""
        SELECT {bucket} AS b, model, sum(prompt_tokens), sum(completion_tokens), count(*)
        FROM calls
        WHERE site_id = ? AND {_UPSTREAM} AND {_OK} AND cost_usd IS NULL AND prompt_tokens IS NOT NULL
        GROUP BY 1, model
        """,
        [site_id],
    ).fetchall()
    out = []
    for b, model, prompt_tokens, completion_tokens, count in rows:
        usd = prices.cost(model, int(prompt_tokens), int(completion_tokens or 0))
        if usd is not None:
            out.append((b, float(usd), int(count)))
    return out


def _audit(cur: Cursor, site_id: str, limit: int) -> list[AuditEntry]:
    rows = cur.execute(
        "SELECT epoch(ts), action, actor, detail FROM audit WHERE site_id = ? ORDER BY ts DESC LIMIT ?",
        [site_id, limit],
    ).fetchall()
    out = []
    for ts, action, actor, raw in rows:
        detail = _json(raw)
        out.append(AuditEntry(_iso(ts), action, actor, _audit_reason(action, detail), detail))
    return out


def _audit_reason(action: str, detail: Any) -> str:
    """One line for an audit row: its recorded reason, else a phrase for the known manual actions."""
    if isinstance(detail, dict):
        if isinstance(detail.get("reason"), str):
            return detail["reason"]
        if action == "pin" and detail.get("target"):
            return f"pinned to {detail['target']}"
        if action == "unpin":
            return f"unpinned (was {detail.get('was')})" if detail.get("was") else "unpinned"
        if action == "training" and isinstance(detail.get("scheduled"), str):  # bookkeeping: never the "why"
            return f"training scheduled: {detail['scheduled']}"
        if action == "training" and isinstance(detail.get("started"), str):
            return f"training started: {detail['started']}"
        if action == "rollback" and detail.get("to_version") is not None:
            return f"rolled back from v{detail.get('from_version')} to v{detail['to_version']}"
    if detail in (None, {}, ""):
        return action
    return f"{action}: {json.dumps(detail, separators=(', ', ': '), default=str)}"


def _why(cur: Cursor, site_id: str, assessment: str) -> str:
    """The newest audit row that explains the site's routing. Bookkeeping rows (a version
    registered, say) explain nothing and are passed over, however many came since; with no
    explaining row, the policy's own reading of the site."""
    actions = sorted(_EXPLAINING_ACTIONS)
    row = cur.execute(
        f"""
        SELECT action, detail FROM audit
        WHERE site_id = ? AND (json_extract_string(detail, '$.reason') IS NOT NULL
                               OR action IN ({", ".join("?" * len(actions))}))
        ORDER BY ts DESC LIMIT 1
        """,
        [site_id, *actions],
    ).fetchone()
    return _audit_reason(row[0], _json(row[1])) if row else assessment


# ---- time series ---------------------------------------------------------------------------


def _bucket_width(cur: Cursor, site_id: str) -> int:
    low, high = cur.execute(
        """
        SELECT min(t), max(t) FROM (
            SELECT epoch(ts) AS t FROM calls WHERE site_id = ?
            UNION ALL SELECT epoch(ts) FROM shadow_results WHERE site_id = ?
        )
        """,
        [site_id, site_id],
    ).fetchone()
    span = (high - low) if low is not None else 0.0
    for width in _BUCKET_WIDTHS:
        if span / width <= MAX_BUCKETS:
            return width
    return _BUCKET_WIDTHS[-1]


def _series(
    cur: Cursor,
    site_id: str,
    policy: PromotionPolicy,
    prices: Prices | None,
    mean_cost: float | None,
) -> TimeSeries:
    width = _bucket_width(cur, site_id)
    bucket = f"floor(epoch(ts) / {width}) * {width}"
    rows = cur.execute(
        f"""
        SELECT {bucket} AS b,
               count(*) FILTER (WHERE {_UPSTREAM} AND {_CLIENT}),
               count(*) FILTER (WHERE {_LOCAL}),
               quantile_cont(latency_ms, 0.5) FILTER (WHERE {_UPSTREAM} AND {_OK} AND {_CLIENT}),
               quantile_cont(latency_ms, 0.95) FILTER (WHERE {_UPSTREAM} AND {_OK} AND {_CLIENT}),
               quantile_cont(latency_ms, 0.5) FILTER (WHERE {_LOCAL} AND {_OK}),
               quantile_cont(latency_ms, 0.95) FILTER (WHERE {_LOCAL} AND {_OK}),
               coalesce(sum(cost_usd) FILTER (WHERE {_UPSTREAM}), 0)
        FROM calls WHERE site_id = ? GROUP BY b ORDER BY b
        """,
        [site_id],
    ).fetchall()
    shadow_p50 = dict(
        cur.execute(
            f"""
            SELECT {bucket} AS b, quantile_cont(local_latency_ms, 0.5)
            FROM shadow_results WHERE site_id = ? AND local_latency_ms IS NOT NULL GROUP BY b
            """,
            [site_id],
        ).fetchall()
    )
    estimated: dict[float | None, float] = {}  # (a bucket is None only without a width)
    for b, usd, _ in _estimated_costs(cur, site_id, prices, bucket_s=width):
        estimated[b] = estimated.get(b, 0.0) + usd

    traffic, latency, cost = [], [], []
    spent_total = saved_total = 0.0
    seen = set()
    for b, n_up, n_local, up50, up95, lo50, lo95, spent in rows:
        seen.add(b)
        traffic.append(TrafficPoint(b, n_up, n_local, n_local / (n_up + n_local) if n_up + n_local else 0.0))
        latency.append(LatencyPoint(b, up50, up95, lo50, lo95, shadow_p50.get(b)))
        spent_total += float(spent) + estimated.get(b, 0.0)
        # The same per-call mean as the totals, so the curve ends exactly at the reported saving.
        saved_total += n_local * (mean_cost or 0.0)
        cost.append(CostPoint(b, spent_total, saved_total))
    # Shadow runs in buckets without recorded calls (rare: calls land first) still get a latency point.
    for b in sorted(set(shadow_p50) - seen):
        latency.append(LatencyPoint(b, None, None, None, None, shadow_p50[b]))
    latency.sort(key=lambda p: p.t)
    return TimeSeries(width, _agreement_series(cur, site_id, policy), traffic, latency, cost)


def _agreement_series(cur: Cursor, site_id: str, policy: PromotionPolicy) -> list[AgreementSeries]:
    """Per version, the running mean of its comparable scores with its confidence sequence."""
    rows = cur.execute(
        "SELECT version, epoch(ts), score FROM shadow_results WHERE site_id = ? AND comparable ORDER BY version, ts, call_id",
        [site_id],
    ).fetchall()
    by_version: dict[int, list[tuple[float, float]]] = {}
    for version, t, score in rows:
        by_version.setdefault(version, []).append((t, float(score)))
    series = []
    for version, samples in by_version.items():
        cs = ConfidenceSequence(policy.alpha / 2)
        every = max(1, -(-len(samples) // MAX_AGREEMENT_POINTS))
        points = []
        for i, (t, score) in enumerate(samples, start=1):
            cs.add(score)
            if i == 1 or i == len(samples) or i % every == 0:
                points.append(AgreementPoint(t, cs.n, cs.mean, *cs.bounds))
        series.append(AgreementSeries(version, points))
    return series


# ---- small helpers -------------------------------------------------------------------------


def _json(raw: Any) -> Any:
    if raw is None or not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _iso(epoch_s: float | None) -> str:
    if epoch_s is None:
        return ""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
