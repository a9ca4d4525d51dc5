"""What the promotion policy judges a site on, read from the store (the router and reports share it).

- A version's evidence in its current state: in `shadow`, every shadow sample since the site
  entered that state (`sites.state_since`); in `local`, the last `window` drift samples since
  then. Each sample is (agreement, local valid, upstream valid), the agreement being the score
  of a pair of valid answers with something to compare (`AgreementScore.agreement`), else None.
- The teacher's reference: the agreement of the site's last `reference_window` self-agreement
  pairs where both upstream answers were valid and something was compared.
- The paired test's samples: shadow calls whose request the teacher also answered twice, each
  with both scores (`evidence_pairs`).
- Partial promotion's samples (`routing.partial`): the same shadow samples with their call id
  and the local answer's confidence, and the teacher's self-agreement per call id.
- The cascade's calibration samples: (confidence, agreement) of the version's valid shadow
  answers with something compared.
"""

from __future__ import annotations

from collections.abc import Iterable

from understudy.db import Cursor
from understudy.routing.partial import ShadowSample
from understudy.routing.policy import Evidence, PromotionPolicy, SiteState

# States whose version serves calls and is judged on drift checks of its served answers.
SERVING_STATES = (SiteState.LOCAL.value, SiteState.PARTIAL.value)
PAIRED_REFERENCE = 1000  # self-agreement scores kept per site by call id (partial promotion's paired reference)
Sample = tuple[float | None, bool, bool | None]  # (agreement, local valid, upstream valid)


def agreement_sql(valid: str, table: str = "") -> str:
    """SQL for `AgreementScore.agreement` of a stored row: its score where the pair was valid (`valid`:
    `local_valid` of a shadow result, `second_valid` of a self-agreement) and something was
    compared, else NULL. `table`: the row's table alias, where a query joins several."""
    t = f"{table}." if table else ""
    return (
        f"CASE WHEN {t}comparable AND {t}{valid} "
        f"AND coalesce(json_extract({t}components, '$.compared_fields')::INT, 1) <> 0 THEN {t}score END"
    )


def _since(cur: Cursor, site_id: str):
    since = cur.execute(
        "SELECT coalesce(state_since, TIMESTAMPTZ '1970-01-01') FROM sites WHERE id = ?", [site_id]
    ).fetchone()
    return since[0] if since else None


def evidence_phase(state: str) -> str:
    """Which shadow results a version is judged on in `state`: drift checks once it serves, else shadow pairs."""
    return "drift" if state in SERVING_STATES else "shadow"


def evidence_samples(cur: Cursor, site_id: str, version: int, state: str, window: int) -> list[Sample]:
    """The samples `decide` weighs for this version in this state, oldest first."""
    phase = evidence_phase(state)
    rows = cur.execute(
        f"SELECT {agreement_sql('local_valid')}, local_valid, upstream_valid FROM shadow_results "
        "WHERE site_id = ? AND version = ? AND coalesce(phase, 'shadow') = ? AND ts >= ? ORDER BY ts, call_id",
        [site_id, version, phase, _since(cur, site_id)],
    ).fetchall()
    samples = [(agreement, local_valid, upstream_valid) for agreement, local_valid, upstream_valid in rows]
    return samples[-window:] if phase == "drift" else samples


def partial_samples(cur: Cursor, site_id: str, version: int) -> list[ShadowSample]:
    """The version's shadow samples since the site entered shadow, oldest first, for `routing.partial`."""
    rows = cur.execute(
        f"SELECT call_id, local_confidence, {agreement_sql('local_valid')}, local_valid, upstream_valid "
        "FROM shadow_results WHERE site_id = ? AND version = ? AND coalesce(phase, 'shadow') = 'shadow' AND ts >= ? "
        "ORDER BY ts, call_id",
        [site_id, version, _since(cur, site_id)],
    ).fetchall()
    return [ShadowSample(*row) for row in rows]


def paired_reference(cur: Cursor, site_id: str, limit: int) -> dict[str, float]:
    """The teacher's self-agreement per call id (valid pairs, something compared), the `limit` most recent."""
    rows = cur.execute(
        f"SELECT call_id, a FROM (SELECT ts, call_id, {agreement_sql('second_valid')} AS a "
        "FROM self_agreement WHERE site_id = ?) WHERE a IS NOT NULL ORDER BY ts DESC LIMIT ?",
        [site_id, limit],
    ).fetchall()
    return {call_id: float(score) for call_id, score in reversed(rows)}


def evidence_pairs(cur: Cursor, site_id: str, version: int) -> list[tuple[str, float, float]]:
    """(call id, local agreement, teacher self-agreement) of the version's shadow calls since the
    site entered shadow that have both scores, in the order each pair was completed (the later
    of its two rows), as the router adds them live."""
    rows = cur.execute(
        f"SELECT s.call_id, s.a, r.a FROM (SELECT call_id, ts, {agreement_sql('local_valid')} AS a "
        "FROM shadow_results WHERE site_id = ? AND version = ? AND coalesce(phase, 'shadow') = 'shadow' "
        "AND ts >= ?) AS s "
        f"JOIN (SELECT call_id, ts, {agreement_sql('second_valid')} AS a FROM self_agreement "
        "WHERE site_id = ?) AS r ON r.call_id = s.call_id "
        "WHERE s.a IS NOT NULL AND r.a IS NOT NULL ORDER BY greatest(s.ts, r.ts), s.call_id",
        [site_id, version, _since(cur, site_id), site_id],
    ).fetchall()
    return [(call_id, float(local), float(teacher)) for call_id, local, teacher in rows]


def evidence_of(
    samples: Iterable[Sample], policy: PromotionPolicy, pairs: Iterable[tuple[str, float, float]] | None = None
) -> Evidence:
    """Evidence from stored samples; with `pairs` (shadow), the paired design and its same-call pairs."""
    evidence = policy.new_evidence(paired=pairs is not None)
    for score, local_valid, upstream_valid in samples:
        evidence.add(score, local_valid, upstream_valid)
    for call_id, agreement, teacher in pairs or ():
        evidence.add_pair(call_id, agreement, teacher)
    return evidence


def stored_evidence(cur: Cursor, site_id: str, version: int, state: str, policy: PromotionPolicy) -> Evidence:
    """The evidence `decide` weighs for this version in this state, as the router loads it."""
    samples = evidence_samples(cur, site_id, version, state, policy.window)
    pairs = evidence_pairs(cur, site_id, version) if evidence_phase(state) == "shadow" else None
    return evidence_of(samples, policy, pairs)


def reference_scores(cur: Cursor, site_id: str, window: int) -> list[float]:
    """The site's most recent self-agreement scores (valid pairs, something compared), oldest first."""
    rows = cur.execute(
        f"SELECT a FROM (SELECT ts, {agreement_sql('second_valid')} AS a FROM self_agreement "
        "WHERE site_id = ?) WHERE a IS NOT NULL ORDER BY ts DESC LIMIT ?",
        [site_id, window],
    ).fetchall()
    return [float(score) for (score,) in reversed(rows)]


def calibration_samples(cur: Cursor, site_id: str, version: int) -> list[tuple[float, float]]:
    """(confidence, agreement) of the version's valid shadow answers with something compared.

    Invalid answers never reach the cascade (the serving gate stops them), so it is calibrated
    on what it decides about: valid answers that may still disagree with the teacher.
    """
    return cur.execute(
        f"SELECT local_confidence, a FROM (SELECT local_confidence, {agreement_sql('local_valid')} AS a "
        "FROM shadow_results WHERE site_id = ? AND version = ? AND coalesce(phase, 'shadow') = 'shadow') "
        "WHERE a IS NOT NULL AND local_confidence IS NOT NULL",
        [site_id, version],
    ).fetchall()


def bar(reference: list[float], policy: PromotionPolicy) -> float:
    """The agreement a local answer must reach: the teacher's self-agreement minus the margin."""
    return max(0.0, teacher_level(reference) - policy.margin)


def teacher_level(reference: list[float]) -> float:
    """The teacher's mean self-agreement; 1 (perfection) with no samples."""
    return sum(reference) / len(reference) if reference else 1.0
