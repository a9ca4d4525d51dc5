"""Partial promotion: while a version shadows, test whether its confident answers alone can be served.

A small model is often right when it is sure and wrong when it is not, so a version that is not
(yet) non-inferior on the whole site may be non-inferior on the calls where its own confidence
is high. This module turns a version's shadow samples into the evidence for that subset:

1. Calibration. The first `calibration_samples` shadow samples with a confidence choose the
   threshold, once. A candidate's subset (answers at or above it, at least `partial_min_share`
   of the calibration samples) must agree with the teacher at least as well as the teacher
   agrees with itself on the same calls, and be valid at least as often; of those, the one
   with the most room under the bar in standard errors ((lead + margin) * sqrt(n)) wins, as
   the likeliest to pass the test. No candidate meets the teacher: no partial promotion for
   this version.
2. Test, on fresh samples only. Every later sample at or above the threshold joins the
   subset's evidence; the policy judges it by the same confidence sequences and margin as a
   whole-site promotion (`routing.policy.judge`), the paired test among them. The teacher's
   reference is its self-agreement on *those same calls* (second upstream answers, paired by
   call id), not the
   site-wide figure: the confident calls are often the easy ones, for the teacher too, and
   comparing them with the site-wide figure would lower the bar. With no paired samples the
   reference is 1, as for a whole site.

Choosing the threshold on samples the test never sees keeps the test's guarantee: given the
threshold, the fresh subset samples are a random sample of the subset's traffic, so the chance
that an inferior subset is ever partly promoted is at most alpha (`benchmarks/partial_promotion_sim.py`
measures it). Answers without a confidence (a model server's) never enter the subset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from understudy.routing.policy import Evidence, PromotionPolicy
from understudy.routing.sequential import ConfidenceSequence

MIN_CALIBRATION_SUBSET = 5  # a subset smaller than this cannot say anything, whatever its share


@dataclass(frozen=True)
class ShadowSample:
    """One scored shadow pair, as the partial rule needs it."""

    call_id: str
    confidence: float | None  # the local answer's own (None: not available from the model)
    agreement: float | None  # `AgreementScore.agreement`: None when there was nothing to weigh
    local_valid: bool
    upstream_valid: bool | None


@dataclass(frozen=True)
class PartialEvidence:
    """The confident subset's evidence for one version in shadow."""

    threshold: float | None  # None: not chosen (yet, or no subset met the teacher in calibration)
    note: str  # why there is no threshold, or how it was chosen
    calibration_n: int  # calibration samples used (with a confidence)
    fresh_n: int  # samples after calibration (with a confidence)
    subset: Evidence  # fresh samples at or above the threshold
    reference: ConfidenceSequence  # the teacher's self-agreement on the subset's calls
    calibrating: bool = False  # fewer than `calibration_samples` samples so far: no threshold yet

    @property
    def share(self) -> float | None:
        """Share of fresh samples at or above the threshold: the share of calls it would serve."""
        return self.subset.validity.n / self.fresh_n if self.threshold is not None and self.fresh_n else None


def choose_threshold(
    calibration: Sequence[ShadowSample],
    reference_by_call: Mapping[str, float],
    site_reference: float,
    min_share: float,
    margin: float,
) -> tuple[float | None, str]:
    """The threshold whose calibration subset meets the teacher with the most room, or None with the reason."""
    scored = [(s.confidence, s) for s in calibration if s.confidence is not None]
    samples = [s for _, s in scored]
    if not samples:
        return None, "no local confidences to calibrate on"
    smallest = max(MIN_CALIBRATION_SUBSET, math.ceil(min_share * len(samples)))
    best: tuple[float, float, str] | None = None  # (power, threshold, note)
    for threshold in sorted({confidence for confidence, _ in scored}):
        subset = [s for confidence, s in scored if confidence >= threshold]
        if len(subset) < smallest:
            break  # higher thresholds only shrink the subset
        agreement = [s.agreement for s in subset if s.agreement is not None]
        validity = [float(s.local_valid) - float(s.upstream_valid) for s in subset if s.upstream_valid is not None]
        paired = [reference_by_call[s.call_id] for s in subset if s.call_id in reference_by_call]
        teacher = sum(paired) / len(paired) if paired else site_reference
        if not agreement or not validity or sum(validity) < 0:
            continue
        lead = sum(agreement) / len(agreement) - teacher
        if lead < 0:
            continue
        # Of the subsets that meet the teacher, the one the fresh test is likeliest to pass: its
        # room under the bar (lead + margin) in standard errors, which grow like 1/sqrt(n).
        power = (lead + margin) * math.sqrt(len(subset))
        if best is None or power > best[0]:
            best = (
                power,
                threshold,
                f"confidence >= {threshold:.3f}: {len(subset) / len(samples):.0%} of "
                f"{len(samples)} calibration samples, agreement "
                f"{sum(agreement) / len(agreement):.2f} vs teacher {teacher:.2f}",
            )
    if best is not None:
        return best[1], best[2]
    return None, (
        f"no confident subset (>= {smallest} of {len(samples)} calibration samples) agreed with the "
        "teacher as well as it agrees with itself"
    )


def partial_evidence(
    samples: Sequence[ShadowSample],
    reference_by_call: Mapping[str, float],
    site_reference: float,
    policy: PromotionPolicy,
) -> PartialEvidence:
    """The subset's evidence from a version's shadow samples (oldest first) since it entered shadow.

    `reference_by_call`: the teacher's self-agreement score per call id (valid pairs with
    something compared); `site_reference`: its site-wide mean, used only to choose a threshold
    when the calibration subset has no paired self-agreement."""
    with_confidence = [(s, s.confidence) for s in samples if s.confidence is not None]
    calibration = [s for s, _ in with_confidence[: policy.calibration_samples]]
    fresh = with_confidence[policy.calibration_samples :]
    subset, reference = policy.new_evidence(paired=True), policy.new_reference(paired=True)
    if samples and not with_confidence:
        # A model server's answers carry no confidence, ever: nothing will calibrate, so nothing is
        # held for it (a version's answers all come from the same kind of model).
        return PartialEvidence(None, "no local confidences to calibrate on", 0, 0, subset, reference)
    if len(calibration) < policy.calibration_samples:
        return PartialEvidence(
            None,
            f"calibrating: {len(calibration)} of {policy.calibration_samples} samples",
            len(calibration),
            0,
            subset,
            reference,
            calibrating=True,
        )
    threshold, note = choose_threshold(
        calibration, reference_by_call, site_reference, policy.partial_min_share, policy.margin
    )
    if threshold is None:
        return PartialEvidence(None, note, len(calibration), len(fresh), subset, reference)
    for sample, confidence in fresh:
        if confidence >= threshold:
            subset.add(sample.agreement, sample.local_valid, sample.upstream_valid)
            if sample.call_id in reference_by_call:
                reference.add(reference_by_call[sample.call_id])
                if sample.agreement is not None:
                    subset.add_pair(sample.call_id, sample.agreement, reference_by_call[sample.call_id])
    return PartialEvidence(threshold, note, len(calibration), len(fresh), subset, reference)
