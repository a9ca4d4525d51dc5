"""The creative-site rule at the default policy, each decision with the control that must come
out the other way. Where the teacher barely agrees with itself, agreement cannot decide: a
version as valid as the teacher and judged as good by the human review is promoted, one the
review judges worse is rejected, one without a review waits and is retired inconclusive at the
cap; a site whose teacher does agree with itself is still decided by agreement, whatever the
review says. Then the same through the router, the store and real judgments."""

from __future__ import annotations

import random

from understudy.routing.policy import PromotionPolicy, SiteState, Verdict, decide, new_review_evidence

POLICY = PromotionPolicy()  # the shipped defaults throughout


def clip(v: float) -> float:
    return min(1.0, max(0.0, v))


def teacher(level: float, n: int = 120, seed: int = 0):
    """The teacher's self-agreement samples around `level` (enemy_archetypes measured 0.20 over 122)."""
    rng = random.Random(seed)
    return POLICY.new_reference().extend([clip(rng.gauss(level, 0.15)) for _ in range(n)])


def shadow(n: int, agreement: float, local_valid: float = 1.0, teacher_valid: float = 0.9, seed: int = 1):
    """Shadow evidence; validity as measured in the showcase (constrained local answers 100 %, the teacher ~90 %)."""
    rng = random.Random(seed)
    evidence = POLICY.new_evidence()
    for _ in range(n):
        evidence.add(clip(rng.gauss(agreement, 0.15)), rng.random() < local_valid, rng.random() < teacher_valid)
    return evidence


def review(differences: list[float]):
    return new_review_evidence(POLICY).extend(differences)


def judged(n: int, mean_points: float, seed: int = 2) -> list[float]:
    """`n` reviewed pairs whose local - upstream score averages `mean_points` on the 1-5 scale."""
    rng = random.Random(seed)
    return [max(-1.0, min(1.0, (mean_points + rng.choice((-1, 0, 0, 1))) / 4)) for _ in range(n)]


def test_a_creative_site_is_decided_by_validity_and_the_review_not_by_agreement():
    creative = teacher(0.20)
    assert creative.bounds[1] < POLICY.creative_below
    # Agreement 0.05 against a teacher at 0.20: the agreement test could not separate this (the
    # measured enemy_archetypes case); a review that finds the answers as good promotes it.
    evidence = shadow(120, agreement=0.05)
    # 60 reviewed pairs: what `understudy review plan` sizes for a ±0.25 interval on a 1-5 score.
    promoted = decide(SiteState.SHADOW, evidence, creative, POLICY, review=review(judged(60, 0.0)))
    assert promoted.new_state is SiteState.LOCAL and promoted.verdict is Verdict.PROMOTED, promoted.reason
    assert "creative site: the teacher agrees with itself only 0.2" in promoted.reason
    assert "judged on validity and the human review" in promoted.reason
    # The control: the same shadow evidence, a review that finds the local answers a point worse.
    rejected = decide(SiteState.SHADOW, evidence, creative, POLICY, review=review(judged(60, -1.0)))
    assert rejected.new_state is SiteState.LEARNING and rejected.verdict is Verdict.REJECTED, rejected.reason
    assert rejected.reason.startswith("rejected: human review inferior to the teacher; creative site")


def test_a_creative_site_without_a_review_waits_then_is_retired_inconclusive():
    creative = teacher(0.20)
    waiting = decide(SiteState.SHADOW, shadow(60, agreement=0.05), creative, POLICY)
    assert waiting.new_state is SiteState.SHADOW and waiting.verdict is None
    assert "waiting for a human review of this version (`understudy review plan SITE`)" in waiting.reason
    capped = decide(SiteState.SHADOW, shadow(POLICY.max_shadow_samples, agreement=0.05), creative, POLICY)
    assert capped.new_state is SiteState.LEARNING and capped.verdict is Verdict.INCONCLUSIVE, capped.reason
    assert "creative site" in capped.reason
    # Validity still rejects without any review (the control for "waits": a version that breaks
    # its answers is not held for the reviewers).
    broken = decide(SiteState.SHADOW, shadow(60, agreement=0.05, local_valid=0.3), creative, POLICY)
    assert broken.verdict is Verdict.REJECTED and broken.reason.startswith("rejected: validity inferior"), broken.reason


def test_a_site_whose_teacher_agrees_with_itself_is_decided_by_agreement_whatever_the_review():
    consistent = teacher(0.65)
    assert consistent.bounds[1] >= POLICY.creative_below
    evidence = shadow(120, agreement=0.05)
    decision = decide(SiteState.SHADOW, evidence, consistent, POLICY, review=review(judged(60, 0.5)))
    assert decision.verdict is Verdict.REJECTED and "creative" not in decision.reason, decision.reason
    assert decision.reason.startswith("rejected: agreement inferior")
    # A teacher with too few second answers is not called creative either: 19 samples at 0.2.
    few = decide(
        SiteState.SHADOW, evidence, teacher(0.20, n=POLICY.min_samples - 1), POLICY, review=review(judged(60, 0.0))
    )
    assert few.verdict is not Verdict.PROMOTED and "creative" not in few.reason, few.reason


def test_a_promoted_creative_site_is_demoted_by_the_review_or_validity_not_by_agreement():
    creative = teacher(0.20)
    window = shadow(POLICY.window, agreement=0.02)
    kept = decide(SiteState.LOCAL, window, creative, POLICY, review=review(judged(60, 0.0)))
    assert kept.new_state is SiteState.LOCAL and kept.verdict is None, kept.reason
    demoted = decide(SiteState.LOCAL, window, creative, POLICY, review=review(judged(60, -1.0)))
    assert demoted.new_state is SiteState.SHADOW and demoted.verdict is Verdict.DEMOTED, demoted.reason


def test_creative_below_is_a_validated_setting_and_zero_turns_the_rule_off():
    import pytest

    for bad in ({"creative_below": -0.1}, {"creative_below": 1.5}, {"creative_below": "low"}):
        with pytest.raises(ValueError):
            PromotionPolicy.from_dict(bad)
    off = PromotionPolicy.from_dict({"creative_below": 0.0})
    decision = decide(SiteState.SHADOW, shadow(120, agreement=0.05), teacher(0.20), off, review=review(judged(60, 0.0)))
    assert decision.verdict is not Verdict.PROMOTED and "creative" not in decision.reason


def test_judgments_recorded_through_the_review_protocol_decide_a_creative_site_in_the_router(tmp_path):
    """The router reads the active version's review from the store (reporting.reviews) and decides
    again when judgments arrive; the control site, its local answers judged worse, is rejected."""
    from datetime import UTC, datetime

    from tests.support.review_data import MAP_SITE, T0, populate
    from tests.support.routers import router_over
    from understudy.reporting import reviews
    from understudy.store import Store

    outcomes = {}
    for label, local_score in (("as good", 3), ("worse", 1)):
        store = Store(tmp_path / f"{label.replace(' ', '-')}.duckdb")
        populate(store, pairs_per_version={1: 100})  # a Map site in shadow with 100 pairs of v1, both answers valid
        cur = store.cursor()
        cur.execute("UPDATE shadow_results SET upstream_valid = true, phase = 'shadow'")
        cur.execute(
            "INSERT INTO model_versions (site_id, version, status, created_at) VALUES (?, 1, 'active', ?)",
            [MAP_SITE, T0],
        )
        rng = random.Random(3)  # the teacher barely agrees with itself: ~0.2 over 60 second answers
        for i in range(60):
            cur.execute(
                "INSERT INTO self_agreement VALUES (?, ?, ?, ?, ?, '{}', true, true, true)",
                [f"sa{i}", f"sb{i}", MAP_SITE, datetime.now(UTC), clip(rng.gauss(0.2, 0.1))],
            )
        records = {r.id: r for r in store.site_records()}
        router = router_over(
            store, current_site=records.get, on_site_change=lambda r, records=records: records.__setitem__(r.id, r)
        )
        router.load()
        router.review_changed(MAP_SITE)  # no judgments yet: validity alone cannot promote it
        assert records[MAP_SITE].state == SiteState.SHADOW.value
        reviews.draw_plan(cur, MAP_SITE, 60, shared=0, seed=1)
        criteria = [c["name"] for c in reviews.rubric_for(cur, MAP_SITE)["criteria"]]
        for item_id, local_side in cur.execute("SELECT id, local_side FROM review_items").fetchall():
            upstream_side = "B" if local_side == "A" else "A"
            scores = {c: {local_side: local_score, upstream_side: 3} for c in criteria}
            reviews.record_judgment(cur, "ann", {"item": item_id, "scores": scores, "preference": "tie"})
        router.review_changed(MAP_SITE)
        outcomes[label] = records[MAP_SITE].state
        store.close()
    assert outcomes == {"as good": SiteState.LOCAL.value, "worse": SiteState.LEARNING.value}, outcomes
