"""Promotion policy: confidence sequences, non-inferiority to the teacher, the state machine, pins,
per-site settings, and the false-promotion rate under a check after every sample."""

from __future__ import annotations

import numpy as np
import pytest

from understudy.routing.policy import (
    Evidence,
    PromotionPolicy,
    SiteState,
    Verdict,
    decide,
    on_new_version,
    on_rollback,
)
from understudy.routing.sequential import ConfidenceSequence, confidence_sequence

POLICY = PromotionPolicy()


def evidence(scores, validity=None, policy: PromotionPolicy = POLICY) -> Evidence:
    """Evidence from agreement scores and (local valid, upstream valid) pairs (default: both valid)."""
    e = policy.new_evidence()
    pairs = validity if validity is not None else [(True, True)] * len(scores)
    for i, (local_valid, upstream_valid) in enumerate(pairs):
        e.add(scores[i] if i < len(scores) else None, local_valid, upstream_valid)
    return e


def reference(scores, policy: PromotionPolicy = POLICY) -> ConfidenceSequence:
    return policy.new_reference().extend(scores)


# --- confidence sequences -----------------------------------------------------------------


def test_a_confidence_sequence_covers_the_mean_at_every_look():
    # 200 streams of 300 Bernoulli(0.7) samples; a stream "misses" if the running CS ever
    # excludes 0.7. Time-uniform coverage: the miss rate stays at or below alpha = 0.05.
    rng = np.random.default_rng(0)
    misses = 0
    for _ in range(200):
        cs = ConfidenceSequence(0.05)
        cs.extend(rng.binomial(1, 0.7, 300))
        low, high = cs.bounds  # the running intersection: excluded at some look means excluded now
        misses += not low <= 0.7 <= high
    assert misses / 200 <= 0.05


def test_bounds_narrow_with_evidence_and_are_the_same_one_at_a_time():
    rng = np.random.default_rng(1)
    xs = rng.uniform(0.5, 1.0, 200)
    one_by_one = ConfidenceSequence()
    for x in xs:
        one_by_one.add(x)
    assert one_by_one.bounds == confidence_sequence(xs)
    assert one_by_one.n == 200 and one_by_one.mean == pytest.approx(xs.mean())
    w10, w200 = np.diff(confidence_sequence(xs[:10]))[0], np.diff(confidence_sequence(xs))[0]
    assert w200 < w10 / 2
    assert confidence_sequence([]) == (0.0, 1.0)
    low, high = confidence_sequence([0.0, 0.0, 1.0] * 20, low=-1.0, high=1.0)
    assert -1.0 < low < 1 / 3 < high < 1.0


# --- the state machine --------------------------------------------------------------------


def test_learning_waits_for_a_version_and_a_new_version_enters_shadow():
    assert (
        decide(SiteState.LEARNING, evidence([1.0] * 100), reference([1.0] * 50), POLICY).new_state is SiteState.LEARNING
    )
    assert on_new_version(SiteState.LEARNING).new_state is SiteState.SHADOW
    assert on_new_version(SiteState.SHADOW).new_state is SiteState.SHADOW
    assert on_new_version(SiteState.LOCAL).new_state is SiteState.SHADOW
    for state in SiteState:
        decision = on_rollback(state)
        assert decision.new_state is SiteState.LEARNING and decision.reason.startswith("rolled back")


def test_a_version_as_good_as_a_consistent_teacher_is_promoted_after_min_samples():
    teacher = reference([1.0] * 30)
    waited = decide(SiteState.SHADOW, evidence([1.0] * 19), teacher, POLICY)
    assert waited.new_state is SiteState.SHADOW and "19 of 20 samples" in waited.reason
    promoted = next(
        n
        for n in range(20, 200)
        if decide(SiteState.SHADOW, evidence([1.0] * n), teacher, POLICY).new_state is SiteState.LOCAL
    )
    decision = decide(SiteState.SHADOW, evidence([1.0] * promoted), teacher, POLICY)
    assert decision.reason.startswith("promoted: non-inferior to the teacher")
    assert decision.judgement.agreement.low >= 1.0 - POLICY.margin
    assert promoted <= 60


def test_the_bar_is_the_teachers_self_agreement_not_perfection():
    # A student at 0.75 cannot be promoted against perfection, but is against a teacher at 0.75.
    rng = np.random.default_rng(2)
    student = list(np.clip(rng.normal(0.75, 0.1, 200), 0, 1))
    against_perfection = decide(SiteState.SHADOW, evidence(student), None, POLICY)
    assert against_perfection.new_state is not SiteState.LOCAL
    teacher = reference(list(np.clip(rng.normal(0.75, 0.1, 150), 0, 1)))
    assert decide(SiteState.SHADOW, evidence(student), teacher, POLICY).new_state is SiteState.LOCAL


def test_an_inferior_version_is_rejected_and_its_reason_says_why():
    teacher = reference([0.9] * 60)
    decision = decide(SiteState.SHADOW, evidence([0.3] * 40), teacher, POLICY)
    assert decision.new_state is SiteState.LEARNING
    assert decision.reason.startswith("rejected: agreement inferior to the teacher")


def test_validity_is_judged_too_paired_with_the_upstream():
    # Perfect agreement where it answered, but invalid on a third of the calls the teacher got right.
    validity = [(i % 3 != 0, True) for i in range(90)]
    scores = [1.0 if ok else 0.0 for ok, _ in validity]
    decision = decide(SiteState.SHADOW, evidence(scores, validity), reference([1.0] * 60), POLICY)
    assert decision.new_state is SiteState.LEARNING and "validity" in decision.reason
    # As valid as a teacher that itself fails now and then: no penalty.
    both = [(i % 10 != 0, i % 10 != 0) for i in range(80)]
    decision = decide(SiteState.SHADOW, evidence([1.0] * 72, both), reference([1.0] * 60), POLICY)
    assert decision.new_state is SiteState.LOCAL


def test_a_local_version_that_goes_bad_is_demoted_but_a_few_misses_do_not():
    teacher = reference([0.95] * 80)
    assert decide(SiteState.LOCAL, evidence([0.0, 0.0]), teacher, POLICY).new_state is SiteState.LOCAL
    assert decide(SiteState.LOCAL, evidence([1.0] * 30 + [0.0] * 3), teacher, POLICY).new_state is SiteState.LOCAL
    assert decide(SiteState.LOCAL, evidence([0.0] * 15), teacher, POLICY).new_state is SiteState.SHADOW
    assert decide(SiteState.LOCAL, evidence([]), teacher, POLICY).new_state is SiteState.LOCAL


def test_in_between_stays_in_shadow():
    decision = decide(SiteState.SHADOW, evidence([0.8] * 30), reference([0.9] * 30), POLICY)
    assert decision.new_state is SiteState.SHADOW and decision.reason.startswith("shadow: not yet decided")


@pytest.mark.parametrize("true_gap", [0.12, 0.2])
def test_false_promotion_rate_stays_below_alpha_when_checked_after_every_sample(true_gap):
    """An inferior version (its agreement `true_gap` below the teacher's, margin 0.10) watched for
    up to 400 shadow samples, the decision taken after every one, with the teacher's reference
    growing beside it: the share of runs ever promoted stays at or below alpha (5%)."""
    rng = np.random.default_rng(int(true_gap * 100))
    runs, promoted = 120, 0
    for _ in range(runs):
        e, ref = POLICY.new_evidence(), POLICY.new_reference()
        for n in range(400):
            e.add(float(rng.uniform(0.8 - true_gap - 0.2, 0.8 - true_gap + 0.2)), True, True)
            if n % 4 == 0:
                ref.add(float(rng.uniform(0.6, 1.0)))  # teacher mean 0.8, one sample per four calls
            if decide(SiteState.SHADOW, e, ref, POLICY).new_state is SiteState.LOCAL:
                promoted += 1
                break
    assert promoted / runs <= POLICY.alpha


# --- pins ---------------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(SiteState))
def test_a_pinned_site_never_moves_on_its_own(state):
    for scores in ([], [1.0] * 50, [0.0] * 50):
        assert decide(state, evidence(scores), reference([1.0] * 10), POLICY, pinned="v3").new_state is state
    assert on_new_version(state, pinned="v3").new_state is state
    assert on_rollback(state, pinned="v3").new_state is state
    assert decide(state, evidence([]), None, POLICY, pinned="v3").reason == "pinned to v3"


def test_a_pin_naming_a_state_routes_the_site_but_never_moves_its_stored_state():
    """The router serves a pinned site as its pin says; the stored state stays where the evidence
    left it, so an unpin returns the site there (never `local` without a sample)."""
    for state in SiteState:
        for pin in ("local", "local@v2", "upstream", "shadow"):
            held = decide(state, evidence([0.0] * 50), reference([1.0] * 10), POLICY, pinned=pin)
            assert held.new_state is state and held.reason == f"pinned to {pin}"
    # Control: the same evidence unpinned moves a shadowing site (rejected).
    assert decide(SiteState.SHADOW, evidence([0.0] * 50), reference([1.0] * 10), POLICY).new_state is SiteState.LEARNING


# --- configuration ------------------------------------------------------------------------


def test_per_site_overrides_merge_over_global_settings():
    global_cfg = {"min_samples": 30, "margin": 0.05, "drift_sample_rate": 0.05}
    site_cfg = {"margin": 0.2, "window": 60}
    policy = PromotionPolicy.from_dict(global_cfg, site_cfg)
    assert policy.min_samples == 30  # global
    assert policy.margin == 0.2  # site wins
    assert policy.window == 60 and policy.drift_sample_rate == 0.05
    assert policy.alpha == 0.05  # default
    assert PromotionPolicy.from_dict(None) == PromotionPolicy()

    # The wider site margin promotes where the global one would not.
    scores, teacher = [0.85] * 150, reference([0.95] * 150)
    assert decide(SiteState.SHADOW, evidence(scores, policy=policy), teacher, policy).new_state is SiteState.LOCAL
    strict = PromotionPolicy.from_dict(global_cfg)
    assert decide(SiteState.SHADOW, evidence(scores, policy=strict), teacher, strict).new_state is not SiteState.LOCAL


@pytest.mark.parametrize(
    "bad",
    [
        {"margn": 0.1},  # misspelt
        {"margin": 1.5},
        {"alpha": 0.0},
        {"min_samples": "x"},  # wrong type
        {"window": 0},
        {"shadow_sample_rate": 1.5},
        {"self_agreement_rate": -0.1},
        {"cascade": "yes"},
    ],
)
def test_invalid_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        PromotionPolicy.from_dict({}, bad)


def test_sample_rate_per_state():
    policy = PromotionPolicy(shadow_sample_rate=0.5, drift_sample_rate=0.02)
    assert policy.sample_rate(SiteState.LEARNING) == 0.0
    assert policy.sample_rate(SiteState.SHADOW) == 0.5
    assert policy.sample_rate(SiteState.LOCAL) == 0.02


def test_an_undecided_version_is_retired_inconclusive_at_max_shadow_samples():
    # Agreement 0.8 against a teacher at 0.9 with margin 0.1: exactly on the bar, so neither
    # non-inferiority nor inferiority can ever be shown; at the default cap it is retired.
    teacher = reference([0.9] * 60)
    cap = POLICY.max_shadow_samples
    before = decide(SiteState.SHADOW, evidence([0.8] * (cap - 1)), teacher, POLICY)
    assert before.new_state is SiteState.SHADOW and before.verdict is None
    retired = decide(SiteState.SHADOW, evidence([0.8] * cap), teacher, POLICY)
    assert retired.new_state is SiteState.LEARNING and retired.verdict is Verdict.INCONCLUSIVE
    assert retired.reason.startswith(f"inconclusive: neither non-inferior nor inferior after {cap} samples")
    # The controls at the same sample count: a version as good as the teacher and a version far
    # worse are decided (promoted, rejected), never retired as inconclusive.
    good = decide(SiteState.SHADOW, evidence([0.9] * cap), teacher, POLICY)
    bad = decide(SiteState.SHADOW, evidence([0.3] * cap), teacher, POLICY)
    assert (good.verdict, bad.verdict) == (Verdict.PROMOTED, Verdict.REJECTED)
    # A local version is judged on its drift window, never retired by the shadow cap.
    assert decide(SiteState.LOCAL, evidence([0.8] * cap), teacher, POLICY).new_state is SiteState.LOCAL
    with pytest.raises(ValueError, match="max_shadow_samples"):
        PromotionPolicy(min_samples=50, max_shadow_samples=40)
