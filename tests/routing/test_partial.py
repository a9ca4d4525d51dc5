"""Partial promotion at the default policy, each decision with the control that must come out the
other way: a version confident and right on a subset is partly promoted, one whose confidence
does not track its correctness is not; the threshold is chosen on calibration samples only; the
subset is judged against the teacher on the same calls; a partly promoted version that goes bad
on its subset is demoted; a rejection waits for the subset's test, never past the cap."""

from __future__ import annotations

import random

from understudy.routing.partial import PartialEvidence, ShadowSample, partial_evidence
from understudy.routing.policy import PromotionPolicy, SiteState, Verdict, decide

POLICY = PromotionPolicy()  # the shipped defaults throughout


def clip(v: float) -> float:
    return min(1.0, max(0.0, v))


def site_stream(
    seed: int,
    n: int = 200,
    *,
    easy_local: float = 0.95,
    easy_teacher: float = 0.90,
    hard_local: float = 0.45,
    hard_teacher: float = 0.85,
    share: float = 0.5,
    informative: bool = True,
) -> tuple[list[ShadowSample], dict[str, float]]:
    """Shadow samples of a site where the model is sure on a `share` of easy calls: (samples, teacher by call)."""
    rng = random.Random(seed)
    samples, paired = [], {}
    for i in range(n):
        easy = rng.random() < share
        confidence = rng.uniform(0.85, 0.99) if easy else rng.uniform(0.3, 0.8)
        local = clip(rng.gauss(easy_local if easy else hard_local, 0.08))
        samples.append(ShadowSample(f"c{i}", confidence, local, True, True))
        paired[f"c{i}"] = clip(rng.gauss(easy_teacher if easy else hard_teacher, 0.08))
    if not informative:  # the same answers, their confidences dealt at random
        confidences = [s.confidence for s in samples]
        rng.shuffle(confidences)
        samples = [
            ShadowSample(s.call_id, c, s.agreement, s.local_valid, s.upstream_valid)
            for s, c in zip(samples, confidences)
        ]
    return samples, paired


def shadow_until_decided(samples: list[ShadowSample], paired: dict[str, float], policy: PromotionPolicy = POLICY):
    """`decide` after every sample, as the router calls it; (decision, samples seen)."""
    evidence, reference, seen = policy.new_evidence(), policy.new_reference(), {}
    decision = None
    for k, sample in enumerate(samples, start=1):
        evidence.add(sample.agreement, sample.local_valid, sample.upstream_valid)
        reference.add(paired[sample.call_id])
        seen[sample.call_id] = paired[sample.call_id]
        partial = partial_evidence(samples[:k], seen, sum(seen.values()) / len(seen), policy)
        decision = decide(SiteState.SHADOW, evidence, reference, policy, partial=partial)
        if decision.new_state is not SiteState.SHADOW:
            return decision, k
    return decision, len(samples)


def test_a_version_confident_and_right_on_a_subset_is_partly_promoted_and_shuffled_confidences_are_not():
    for seed in range(3):
        decision, n = shadow_until_decided(*site_stream(seed))
        assert decision.new_state is SiteState.PARTIAL and decision.verdict is Verdict.PARTIAL, decision.reason
        assert 0.8 < decision.threshold < 0.9 and n <= POLICY.max_shadow_samples
        assert decision.reason.startswith("partly promoted: answers at confidence >= ")
        # The control: the same answers with confidences that do not track correctness.
        control, _ = shadow_until_decided(*site_stream(seed, informative=False))
        assert control.new_state is SiteState.LEARNING, control.reason
        assert control.verdict in (Verdict.REJECTED, Verdict.INCONCLUSIVE), control.reason


def test_the_threshold_is_chosen_on_calibration_samples_and_tested_on_fresh_ones():
    good, paired = site_stream(10)
    calibration = good[: POLICY.calibration_samples]
    # After calibration the confident answers turn wrong: the subset the threshold picked must be
    # tested on these, not on the calibration samples that made it look good.
    worse, worse_paired = site_stream(11, easy_local=0.3)
    worse = [ShadowSample(f"w{s.call_id}", s.confidence, s.agreement, True, True) for s in worse]
    paired_all = {**paired, **{f"w{k}": v for k, v in worse_paired.items()}}
    decision, _ = shadow_until_decided(calibration + worse[: POLICY.max_shadow_samples - len(calibration)], paired_all)
    assert decision.new_state is SiteState.LEARNING and decision.verdict is Verdict.REJECTED, decision.reason
    # The control: the same calibration, fresh samples like it.
    decision, _ = shadow_until_decided(good, paired)
    assert decision.verdict is Verdict.PARTIAL


def test_the_subset_is_judged_against_the_teacher_on_the_same_calls():
    # The confident calls are easy for the teacher too (0.98 there, 0.75 elsewhere): a subset at
    # 0.84 beats the site-wide teacher (~0.84) but is 0.14 under the teacher on its own calls.
    samples, paired = site_stream(20, easy_local=0.84, easy_teacher=0.98, hard_teacher=0.75)
    decision, _ = shadow_until_decided(samples, paired)
    assert decision.verdict is not Verdict.PARTIAL, decision.reason
    partial = partial_evidence(samples, paired, sum(paired.values()) / len(paired), POLICY)
    assert partial.threshold is None or partial.reference.mean > 0.9  # the paired reference, not the site's
    # The control: as good as the teacher on those calls.
    decision, _ = shadow_until_decided(*site_stream(20, easy_local=0.98, easy_teacher=0.98, hard_teacher=0.75))
    assert decision.verdict is Verdict.PARTIAL, decision.reason


def test_a_partly_promoted_version_that_goes_bad_on_its_subset_is_demoted():
    teacher = POLICY.new_reference().extend([0.9] * 100)

    def drift_window(score: float):
        evidence = POLICY.new_evidence()
        for _ in range(POLICY.window):
            evidence.add(score, True, True)
        return evidence

    bad = decide(SiteState.PARTIAL, drift_window(0.4), teacher, POLICY, threshold=0.85)
    assert bad.new_state is SiteState.SHADOW and bad.verdict is Verdict.DEMOTED
    assert bad.reason.startswith("demoted: the served subset (confidence >= 0.850) agreement inferior")
    good = decide(SiteState.PARTIAL, drift_window(0.9), teacher, POLICY, threshold=0.85)
    assert good.new_state is SiteState.PARTIAL and good.verdict is None and good.threshold == 0.85


def test_a_rejection_waits_for_the_subsets_test_but_not_past_the_cap():
    samples, paired = site_stream(30)
    evidence, reference = POLICY.new_evidence(), POLICY.new_reference()
    for s in samples[: POLICY.calibration_samples - 1]:
        evidence.add(0.1, True, True)  # far worse than the teacher overall
        reference.add(paired[s.call_id])
    calibrating = partial_evidence(samples[: POLICY.calibration_samples - 1], paired, 0.9, POLICY)
    held = decide(SiteState.SHADOW, evidence, reference, POLICY, partial=calibrating)
    assert (
        held.new_state is SiteState.SHADOW and "rejection held while the confident subset is calibrated" in held.reason
    )
    # Without partial promotion (the control) the same evidence is rejected at once.
    assert decide(SiteState.SHADOW, evidence, reference, POLICY).verdict is Verdict.REJECTED
    # At the cap nothing is held.
    for _ in range(POLICY.max_shadow_samples):
        evidence.add(0.1, True, True)
    assert decide(SiteState.SHADOW, evidence, reference, POLICY, partial=calibrating).verdict is Verdict.REJECTED


def test_a_subset_under_test_outlasts_the_sites_cap_until_it_has_had_its_own():
    """A version worse than the teacher overall whose confident third is as good as the teacher:
    at the site's cap that subset has ~54 samples, not yet enough to decide, so the rejection
    waits; controls: the same with an inferior subset is rejected at once, and a subset still
    undecided after `max_shadow_samples` samples of its own lets the rejection through."""
    teacher = POLICY.new_reference().extend([1.0] * 200)
    cap = POLICY.max_shadow_samples
    site = POLICY.new_evidence()
    for _ in range(cap):
        site.add(0.5, True, True)

    def tested_subset(scores: list[float]) -> PartialEvidence:
        subset, reference = POLICY.new_evidence(), POLICY.new_reference()
        for score in scores:
            subset.add(score, True, True)
            reference.add(1.0)
        return PartialEvidence(0.99, "chosen", POLICY.calibration_samples, 3 * len(scores), subset, reference)

    undecided = tested_subset([1.0] * 54)
    held = decide(SiteState.SHADOW, site, teacher, POLICY, partial=undecided)
    assert held.new_state is SiteState.SHADOW, held.reason
    assert "rejection held while the confident subset is tested" in held.reason
    inferior = tested_subset([0.5] * 54)
    assert decide(SiteState.SHADOW, site, teacher, POLICY, partial=inferior).verdict is Verdict.REJECTED
    # A few more subset samples decide it: partly promoted.
    passed = decide(SiteState.SHADOW, site, teacher, POLICY, partial=tested_subset([1.0] * 70))
    assert passed.verdict is Verdict.PARTIAL, passed.reason
    # A subset that never decides is not waited for past its own cap.
    straddling = tested_subset([0.9, 0.8] * (cap // 2))
    assert decide(SiteState.SHADOW, site, teacher, POLICY, partial=straddling).verdict is Verdict.REJECTED


def test_answers_without_a_confidence_hold_nothing_for_calibration():
    """A model server's answers carry no confidence: no subset can ever be calibrated, so a version
    far worse than the teacher is rejected at `min_samples`; control: the same answers with
    confidences hold the rejection while the subset is calibrated."""
    teacher = POLICY.new_reference().extend([1.0] * 30)
    site = POLICY.new_evidence()
    for _ in range(POLICY.min_samples):
        site.add(0.0, True, True)

    def samples(confidence):
        return [ShadowSample(f"c{n}", confidence, 0.0, True, True) for n in range(POLICY.min_samples)]

    without = partial_evidence(samples(None), {}, 1.0, POLICY)
    assert not without.calibrating and without.threshold is None
    assert decide(SiteState.SHADOW, site, teacher, POLICY, partial=without).verdict is Verdict.REJECTED
    calibrating = partial_evidence(samples(0.9), {}, 1.0, POLICY)
    assert calibrating.calibrating
    assert decide(SiteState.SHADOW, site, teacher, POLICY, partial=calibrating).new_state is SiteState.SHADOW


def test_partial_settings_are_validated():
    import pytest

    for bad in ({"calibration_samples": 0}, {"partial_min_share": 0.0}, {"partial_min_share": 1.5}, {"partial": "yes"}):
        with pytest.raises(ValueError):
            PromotionPolicy.from_dict(bad)
    assert PromotionPolicy.from_dict({"partial": False}).partial is False
