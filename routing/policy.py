"""Per-site routing states and the rules that move a site between them.

A site is in one of four states:

    learning ──new version──► shadow ──non-inferior to the teacher──► local
        ▲                       │  ▲ ▲                                 │
        └─ inferior/undecided ──┘  │ └────────── inferior ─────────────┘
                                   │
                 shadow ──confident subset non-inferior──► partial
                                   └──── subset inferior ───┘
        (and any state ──rollback──► learning)

- `learning`: the upstream answers; calls are recorded for training. Nothing to evaluate.
- `shadow`: the upstream answers; the site's newest local version runs beside it on a
  `shadow_sample_rate` share of calls and each pair is scored (`routing.scoring`).
- `local`: the local version answers; a `drift_sample_rate` share of calls is also sent
  upstream, so the version keeps being judged after promotion.
- `partial`: the local version answers every call first; an answer at or above the site's
  confidence threshold is served (with drift checks on a `drift_sample_rate` share, as in
  `local`), any other goes to the upstream and the pair is scored as a shadow sample.

The bar is the teacher, not perfection
-------------------------------------
A stochastic upstream does not agree with itself, and it sometimes fails its own validator.
So a version is compared with the upstream on two measures, each with `margin`:

- validity: on each shadowed call, local answer valid (1/0) minus upstream answer valid (1/0),
  the paired difference of their pass rates (parse, schema, task validator with the request's
  arguments);
- agreement, where both answers are valid and there is something to compare: the version's
  scores against the upstream's *self-agreement* (a second upstream answer to the same request
  scored against the first, both valid; see `routing.router` for its budget). With no such
  samples the reference is 1 (perfection). A site whose answers leave nothing to compare (every
  field checked by its validator, like the RPG `Map`) is judged on validity alone once
  `min_samples` valid pairs have shown there is nothing to compare.

Each mean gets a confidence sequence (`routing.sequential`): bounds that hold at every sample
size at once, so the decision may be re-checked after every sample. Validity uses one at alpha.
Agreement has two tests, and either may decide:

- unpaired: one CS for the version's scores and one for the reference, lower(agreement) -
  upper(reference) against -margin. Each bound carries its own error, so the gap needs both
  widths: a version 0.02 under a teacher at 0.58 stayed undecided after 256 samples against a
  200-sample reference (docs/benchmarks.md), and more shadowing could not help, the reference's
  width being fixed by its window.
- paired (in shadow): on a call where the teacher was also asked a second time, the difference
  local agreement - teacher self-agreement, on the same request. One CS on that difference
  needs one width, of sqrt(var_local + var_teacher) rather than the sum of two, and keeps
  shrinking as the version shadows: the free teachers (the offline one, a model server of
  one's own) answer twice on every shadowed call, so every sample is paired. A paid upstream
  is asked on a `self_agreement_rate` share only, where the unpaired test does the work.

In shadow the agreement error is split between them, alpha / 2 to the paired CS and alpha / 4
to each unpaired CS (`PromotionPolicy.unpaired_alpha`); served versions (drift checks) have no
second answers, so the unpaired test runs alone at alpha / 2 per CS. The split is fixed by the
state, never by the data, so either test deciding keeps the bound below.

- shadow → local ("promoted"): at least `min_samples` samples, and non-inferior on both:
  lower(validity difference) >= -margin, and lower(agreement) - upper(reference) >= -margin or
  lower(paired difference) >= -margin.
- shadow → learning ("rejected"), after the same `min_samples`: inferior on either:
  upper(agreement) - lower(reference) < -margin or upper(paired difference) < -margin, or
  upper(validity difference) < -margin.
- local → shadow ("demoted"): inferior on either, judged on the last `window` drift samples.
- shadow → partial ("partial"), when the whole site is neither promoted nor rejected: the
  answers at or above a confidence threshold are non-inferior on both measures, by the same
  test and margin, on samples the threshold was not chosen on (`routing.partial`). While that
  subset is tested and not inferior, the version's rejection or retirement waits, up to
  `max_shadow_samples` samples of the subset's own (its confidence sequences stay valid
  however long it runs; the cap only bounds the shadowing spent on it).
- partial → shadow ("demoted"): the served subset is inferior on either measure, judged on the
  last `window` drift samples (all of them from the subset).
- A creative site: where the teacher barely agrees with itself (the upper bound of its
  self-agreement below `creative_below`, after `min_samples` second answers), agreement with
  the teacher cannot tell a good version from a bad one: two good answers differ as much as a
  good and a bad one. There agreement neither promotes, rejects nor demotes; the decision rests
  on validity and the blind human review (`reporting.reviews.review_evidence`: per judgment of
  the active version, local minus upstream score averaged over the rubric's criteria, scaled
  from the 1-5 scale to [-1, 1], with its own confidence sequence and the same margin).
  Promoted: validity and review both non-inferior. Rejected: either inferior. Without a review
  verdict the version waits in shadow (the reason says so and names the command) and is retired
  inconclusive at `max_shadow_samples`. No partial promotion (its subset test is an agreement
  test). The reason names the rule and the teacher's figure; the report shows it.
- shadow → learning ("inconclusive"): none of these after `max_shadow_samples`. A version whose
  intervals still straddle the bar by then is within about their half-width of it (±0.15 on
  agreement at 200 samples, alpha 0.05): more shadowing buys little (the width shrinks like
  1/sqrt(n)), while the site's data has usually doubled since the version's snapshot, so a new
  version is the better next step (`understudy.training.jobs` retrains on the verdict). Controls
  are retired the same way: a control that cannot be decided says so and does not hold the site.

False promotion: if the version is worse than the teacher by more than the margin on either
measure, the chance that it is ever promoted, however long it is watched, is at most alpha
(5% at the defaults). The same bound holds for rejecting or demoting a version that is in fact
non-inferior. Shadow evidence runs from the moment the version entered shadow; demotion
evidence is a sliding window, so its guarantee restarts with the window.

- any → learning on rollback (`on_rollback`); learning/shadow/local → shadow when a new
  version arrives (`on_new_version`): a new version must earn the traffic itself, so a site
  that was local goes back to the upstream until it does.
- A pin overrides all of this: a pinned site never changes state while it is pinned. The pin
  decides who answers (`routing.router`: `upstream`, or `local[@vN]`), never the stored state,
  so an unpin returns the site to the state its evidence left it in. (A pin that moved the state
  to the one it names did so whenever the policy next looked at the site, which could be a
  second answer scored just after the pin or never: an unpin then left the site either where
  it was or `local` without a sample.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from understudy.layered_settings import check_field_types, merge_layers
from understudy.routing.sequential import ConfidenceSequence

if TYPE_CHECKING:
    from understudy.routing.partial import PartialEvidence


class SiteState(str, Enum):
    LEARNING = "learning"
    SHADOW = "shadow"
    LOCAL = "local"
    PARTIAL = "partial"  # the confident subset is served locally, the rest by the upstream


# What a user may write in a pin; "upstream" reads better than "learning" for "never local".
_PIN_STATES = {s.value: s for s in SiteState} | {"upstream": SiteState.LEARNING}


@dataclass(frozen=True)
class PromotionPolicy:
    """Margins, evidence and sampling for one site; `from_dict` layers per-site overrides on global."""

    min_samples: int = 20  # shadow samples before a version can be promoted or rejected
    max_shadow_samples: int = 200  # shadow samples after which an undecided version is retired (inconclusive)
    margin: float = 0.10  # non-inferiority margin on agreement and on validity (absolute, in [0, 1])
    alpha: float = 0.05  # error rate of each decision: the chance of ever promoting a worse version
    window: int = 100  # drift samples a local version is judged on (most recent)
    shadow_sample_rate: float = 1.0  # share of calls run on the local model in shadow
    drift_sample_rate: float = 0.1  # share of calls also sent upstream once local
    self_agreement_rate: float = 0.1  # share of shadowed calls asked a second time (paid upstreams); 0 disables
    reference_window: int = 200  # most recent self-agreement samples forming the teacher's reference
    cascade: bool = True  # in local, send answers below the calibrated confidence to the upstream
    partial: bool = True  # in shadow, also test the confident subset for partial promotion
    calibration_samples: int = 40  # first shadow samples of a version, used only to choose the subset's threshold
    partial_min_share: float = 0.2  # smallest share of calibration samples a subset may have
    creative_below: float = 0.4  # teacher self-agreement (upper bound) below which agreement cannot decide; 0: never

    def __post_init__(self) -> None:
        check_field_types(self)
        if min(self.min_samples, self.window, self.reference_window, self.calibration_samples) < 1:
            raise ValueError("min_samples, window, reference_window and calibration_samples must be >= 1")
        if not 0.0 <= self.creative_below <= 1.0:
            raise ValueError("creative_below must be in [0, 1]")
        if not 0.0 < self.partial_min_share <= 1.0:
            raise ValueError("partial_min_share must be in (0, 1]")
        if self.max_shadow_samples < self.min_samples:
            raise ValueError("max_shadow_samples must be >= min_samples")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError("margin must be in [0, 1)")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must be in (0, 1)")
        for name in ("shadow_sample_rate", "drift_sample_rate", "self_agreement_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None) -> PromotionPolicy:
        """Global settings, then per-site `overrides` on top (a site sets only what differs).

        Unknown keys raise ValueError: a misspelt setting silently ignored would change
        routing without anyone noticing.
        """
        return cls(**merge_layers(cls, "promotion", (data, overrides)))

    def sample_rate(self, state: SiteState) -> float:
        """Share of calls on which both models run (and a score is produced) in `state`."""
        return {
            SiteState.LEARNING: 0.0,
            SiteState.SHADOW: self.shadow_sample_rate,
            SiteState.LOCAL: self.drift_sample_rate,
            SiteState.PARTIAL: self.drift_sample_rate,
        }[SiteState(state)]

    def unpaired_alpha(self, paired: bool) -> float:
        """The level of each of the unpaired agreement test's two CSs (the version's, the reference's).

        The agreement error rate `alpha` is split between the tests that may decide: unpaired
        alone, alpha / 2 per CS; with the paired test beside it (`paired`), alpha / 2 to the paired
        CS and alpha / 4 per unpaired CS, so that either test clearing the bar stays within alpha.
        """
        return self.alpha / 4 if paired else self.alpha / 2

    def new_evidence(self, paired: bool = False) -> Evidence:
        """Empty evidence; `paired`: samples may also carry the teacher's self-agreement on the same call."""
        return Evidence(
            ConfidenceSequence(self.unpaired_alpha(paired)),
            ConfidenceSequence(self.alpha, low=-1.0, high=1.0),
            paired=ConfidenceSequence(self.alpha / 2, low=-1.0, high=1.0) if paired else None,
        )

    def new_reference(self, paired: bool = False) -> ConfidenceSequence:
        """The teacher's reference CS, at the level matching `new_evidence(paired)`."""
        return ConfidenceSequence(self.unpaired_alpha(paired))


@dataclass
class Evidence:
    """What one version has shown: agreement scores and paired validity differences, as CSs."""

    agreement: ConfidenceSequence  # scores of pairs of valid answers with something to compare, in [0, 1]
    validity: ConfidenceSequence  # local valid - upstream valid, in [-1, 1]
    valid_pairs: int = 0  # samples where both answers were valid (with or without anything to compare)
    # Same-call differences, local agreement - teacher self-agreement, in [-1, 1]; None: the design
    # has no second answers (drift checks), so only the unpaired test runs.
    paired: ConfidenceSequence | None = None
    paired_calls: set[str] = field(default_factory=set)  # call ids already in `paired`

    def add(self, agreement: float | None, local_valid: bool, upstream_valid: bool | None) -> None:
        """One sample: `agreement` is `AgreementScore.agreement` (None: nothing to weigh)."""
        if agreement is not None:
            self.agreement.add(agreement)
        if upstream_valid is not None:
            self.validity.add(float(local_valid) - float(upstream_valid))
            self.valid_pairs += bool(local_valid and upstream_valid)

    def add_pair(self, call_id: str, agreement: float, teacher: float) -> None:
        """One call with both a local agreement score and the teacher's self-agreement score,
        added when the later of the two arrives (once per call, whichever path sees it first)."""
        if self.paired is not None and call_id not in self.paired_calls:
            self.paired_calls.add(call_id)
            self.paired.add(agreement - teacher)


@dataclass(frozen=True)
class Bounds:
    n: int
    mean: float | None
    low: float
    high: float

    @classmethod
    def of(cls, cs: ConfidenceSequence) -> Bounds:
        return cls(cs.n, cs.mean, *cs.bounds)

    def __str__(self) -> str:
        if not self.n:
            return "no samples"
        return (
            f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}] over {self.n}"
            if self.low < 0
            else f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}] over {self.n}"
        )


@dataclass(frozen=True)
class Judgement:
    """The comparison a decision rests on (shown in reports)."""

    agreement: Bounds
    reference: Bounds | None  # None: no self-agreement samples, the reference is 1
    validity: Bounds
    margin: float
    valid_pairs: int = 0
    min_pairs: int = 1  # valid pairs needed before "nothing to compare" is believed
    creative: bool = False  # the teacher barely agrees with itself: agreement does not decide
    review: Bounds | None = None  # the human review of this version, local - upstream in [-1, 1]
    paired: Bounds | None = None  # same-call local - teacher agreement differences (None: unpaired design)

    @property
    def nothing_to_compare(self) -> bool:
        """Enough valid pairs seen, none with anything left to compare: agreement is the validator's."""
        return self.agreement.n == 0 and self.valid_pairs >= self.min_pairs

    @property
    def reference_low(self) -> float:
        return 1.0 if self.reference is None else self.reference.low

    @property
    def reference_high(self) -> float:
        return 1.0 if self.reference is None else self.reference.high

    def agreement_non_inferior(self) -> bool:
        """Either test clears the bar: the unpaired one (version vs reference) or the paired one."""
        if self.nothing_to_compare:
            return True
        unpaired = self.agreement.n > 0 and self.agreement.low - self.reference_high >= -self.margin
        paired = self.paired is not None and self.paired.n > 0 and self.paired.low >= -self.margin
        return unpaired or paired

    def agreement_inferior(self) -> bool:
        unpaired = self.agreement.n > 0 and self.agreement.high - self.reference_low < -self.margin
        paired = self.paired is not None and self.paired.n > 0 and self.paired.high < -self.margin
        return unpaired or paired

    def validity_non_inferior(self) -> bool:
        return self.validity.n > 0 and self.validity.low >= -self.margin

    def validity_inferior(self) -> bool:
        return self.validity.n > 0 and self.validity.high < -self.margin

    def review_non_inferior(self) -> bool:
        return self.review is not None and self.review.n > 0 and self.review.low >= -self.margin

    def review_inferior(self) -> bool:
        return self.review is not None and self.review.n > 0 and self.review.high < -self.margin

    def inferior(self) -> list[str]:
        """The measures on which the version is inferior to the teacher (agreement not, on a creative site)."""
        checks = (
            (("validity", self.validity_inferior()), ("human review", self.review_inferior()))
            if self.creative
            else (("agreement", self.agreement_inferior()), ("validity", self.validity_inferior()))
        )
        return [what for what, bad in checks if bad]

    def non_inferior(self) -> bool:
        if self.creative:
            return self.validity_non_inferior() and self.review_non_inferior()
        return self.agreement_non_inferior() and self.validity_non_inferior()

    def __str__(self) -> str:
        reference = "1 (no self-agreement samples)" if self.reference is None else str(self.reference)
        if self.creative:
            review = str(self.review) if self.review is not None and self.review.n else "no judgments of this version"
            return (
                f"validity local - teacher {self.validity}; human review local - teacher {review}; "
                f"agreement {self.agreement} (not decisive); margin {self.margin:.2f}"
            )
        agreement = (
            f"nothing to compare beyond the validator in {self.valid_pairs} valid pairs"
            if self.nothing_to_compare
            else f"agreement {self.agreement} vs teacher {reference}"
        )
        if self.paired is not None and not self.nothing_to_compare:
            pairs = str(self.paired) if self.paired.n else "no pairs yet"
            agreement += f"; same-call agreement local - teacher {pairs}"
        return f"validity local - teacher {self.validity}; {agreement}; margin {self.margin:.2f}"


def is_creative(reference: ConfidenceSequence | None, policy: PromotionPolicy) -> bool:
    """The teacher barely agrees with itself: its self-agreement's upper bound is below
    `creative_below`, on at least `min_samples` second answers."""
    return (
        policy.creative_below > 0
        and reference is not None
        and reference.n >= policy.min_samples
        and reference.bounds[1] < policy.creative_below
    )


def judge(
    evidence: Evidence,
    reference: ConfidenceSequence | None,
    policy: PromotionPolicy,
    review: ConfidenceSequence | None = None,
) -> Judgement:
    if reference is not None and reference.alpha != policy.unpaired_alpha(evidence.paired is not None):
        # a reference built for the other design would spend the wrong share of alpha, silently
        raise ValueError("the reference's level does not match the evidence: build both with the same `paired`")
    ref = Bounds.of(reference) if reference is not None and reference.n else None
    return Judgement(
        Bounds.of(evidence.agreement),
        ref,
        Bounds.of(evidence.validity),
        policy.margin,
        evidence.valid_pairs,
        policy.min_samples,
        is_creative(reference, policy),
        Bounds.of(review) if review is not None else None,
        Bounds.of(evidence.paired) if evidence.paired is not None else None,
    )


def new_review_evidence(policy: PromotionPolicy) -> ConfidenceSequence:
    """The human review's confidence sequence: judgments' local - upstream scores in [-1, 1]."""
    return ConfidenceSequence(policy.alpha, low=-1.0, high=1.0)


class Verdict(str, Enum):
    """What a decision concluded about the active version (None on a decision that concludes nothing)."""

    PROMOTED = "promoted"
    REJECTED = "rejected"
    INCONCLUSIVE = "inconclusive"
    DEMOTED = "demoted"
    PARTIAL = "partial"  # the confident subset promoted


@dataclass(frozen=True)
class Decision:
    new_state: SiteState
    reason: str  # one line for reports and logs
    judgement: Judgement | None = None
    verdict: Verdict | None = None
    threshold: float | None = None  # partial: the confidence at or above which answers are served locally


def decide(
    state: SiteState | str,
    evidence: Evidence | None,
    reference: ConfidenceSequence | None,
    policy: PromotionPolicy,
    pinned: str | None = None,
    partial: PartialEvidence | None = None,
    threshold: float | None = None,
    review: ConfidenceSequence | None = None,
) -> Decision:
    """The state a site should be in, given its active version's evidence and the teacher's reference.

    In shadow, `partial` is the confident subset's evidence (`routing.partial`); in partial,
    `evidence` is the served subset's drift window and `threshold` the one it is served at.
    `review` is the human review of the active version (`new_review_evidence`); it decides, with
    validity, only on a creative site."""
    state = SiteState(state)
    if pinned:
        return _pinned(state, pinned)
    if state is SiteState.LEARNING or evidence is None:
        return Decision(state, "learning: waiting for a trained version to shadow")

    j = judge(evidence, reference, policy, review)
    inferior = j.inferior()
    creative = _creative_line(j, policy)
    if state is SiteState.SHADOW:
        if j.validity.n < policy.min_samples:
            return Decision(state, f"shadow: {j.validity.n} of {policy.min_samples} samples; {creative}{j}", j)
        if j.non_inferior():
            return Decision(
                SiteState.LOCAL, f"promoted: non-inferior to the teacher; {creative}{j}", j, Verdict.PROMOTED
            )
        if j.creative:
            return _decide_creative(state, j, policy, creative)
        subset = (
            judge(partial.subset, partial.reference, policy)
            if partial is not None and partial.threshold is not None
            else None
        )
        if (
            partial is not None
            and subset is not None
            and subset.validity.n >= policy.min_samples
            and subset.agreement_non_inferior()
            and subset.validity_non_inferior()
        ):
            return Decision(
                SiteState.PARTIAL,
                f"partly promoted: answers at confidence >= {partial.threshold:.3f} "
                f"({partial.share:.0%} of fresh samples) non-inferior to the teacher; "
                f"{subset}; the rest stays upstream",
                subset,
                Verdict.PARTIAL,
                partial.threshold,
            )
        capped = j.validity.n >= policy.max_shadow_samples
        on_subset = _subset_line(partial, subset)
        # The confident subset is tested like a site: until it is decided or has had
        # `max_shadow_samples` samples of its own. It only gathers its share of the site's samples,
        # so the whole site's cap would cut its test short (at a third of the calls, 54 subset
        # samples by the cap: 2 short of deciding a subset exactly as good as the teacher).
        subset_under_test = (
            subset is not None
            and subset.validity.n < policy.max_shadow_samples
            and not subset.agreement_inferior()
            and not subset.validity_inferior()
        )
        if inferior:
            # A version worse than the teacher overall may still serve its confident answers: its
            # rejection waits while that subset is calibrated (never past the cap) or tested.
            held = subset_under_test or (not capped and partial is not None and partial.calibrating)
            if not held:
                return Decision(
                    SiteState.LEARNING,
                    f"rejected: {' and '.join(inferior)} inferior to the teacher; {j}; "
                    "back to learning for a new version",
                    j,
                    Verdict.REJECTED,
                )
            assert partial is not None  # `held` requires it
            return Decision(
                state,
                f"shadow: {' and '.join(inferior)} inferior to the teacher, rejection held while "
                f"the confident subset is {'calibrated' if partial.calibrating else 'tested'}; "
                f"{j}{on_subset}",
                j,
            )
        if capped and not subset_under_test:
            return Decision(
                SiteState.LEARNING,
                f"inconclusive: neither non-inferior nor inferior after "
                f"{j.validity.n} samples (max_shadow_samples); {j}; "
                "retired, back to learning for a new version",
                j,
                Verdict.INCONCLUSIVE,
            )
        return Decision(state, f"shadow: not yet decided; {j}{on_subset}", j)

    if state is SiteState.PARTIAL:
        at = f" (confidence >= {threshold:.3f})" if threshold is not None else ""
        if inferior:
            return Decision(
                SiteState.SHADOW,
                f"demoted: the served subset{at} {' and '.join(inferior)} inferior to the teacher; {creative}{j}",
                j,
                Verdict.DEMOTED,
            )
        return Decision(state, f"partial: served subset{at}: {creative}{j}", j, threshold=threshold)

    # LOCAL
    if inferior:
        return Decision(
            SiteState.SHADOW,
            f"demoted: {' and '.join(inferior)} inferior to the teacher; {creative}{j}",
            j,
            Verdict.DEMOTED,
        )
    return Decision(state, f"local: {creative}{j}", j)


def _creative_line(j: Judgement, policy: PromotionPolicy) -> str:
    """Why agreement does not decide on a creative site (empty elsewhere)."""
    if not j.creative or j.reference is None:
        return ""
    return (
        f"creative site: the teacher agrees with itself only {j.reference.mean:.2f} "
        f"[{j.reference.low:.2f}, {j.reference.high:.2f}] (< creative_below {policy.creative_below:.2f}), "
        "so agreement cannot decide; judged on validity and the human review; "
    )


def _decide_creative(state: SiteState, j: Judgement, policy: PromotionPolicy, creative: str) -> Decision:
    """A creative site in shadow, not promoted: rejected on validity or the review, else waiting
    for the review until `max_shadow_samples`."""
    inferior = j.inferior()
    if inferior:
        return Decision(
            SiteState.LEARNING,
            f"rejected: {' and '.join(inferior)} inferior to the teacher; {creative}{j}; "
            "back to learning for a new version",
            j,
            Verdict.REJECTED,
        )
    waiting = (
        "the human review has not decided"
        if j.review is not None and j.review.n
        else "waiting for a human review of this version (`understudy review plan SITE`)"
    )
    if j.validity.n >= policy.max_shadow_samples:
        return Decision(
            SiteState.LEARNING,
            f"inconclusive: {waiting} after {j.validity.n} samples "
            f"(max_shadow_samples); {creative}{j}; retired, back to learning for a "
            "new version",
            j,
            Verdict.INCONCLUSIVE,
        )
    return Decision(state, f"shadow: {waiting}; {creative}{j}", j)


def _subset_line(partial: PartialEvidence | None, subset: Judgement | None) -> str:
    """The confident subset's state, for a shadow decision's reason."""
    if partial is None:
        return ""
    if subset is None:
        return f"; confident subset: {partial.note}"
    return f"; confident subset (confidence >= {partial.threshold:.3f}): {subset}"


def on_new_version(state: SiteState | str, pinned: str | None = None) -> Decision:
    """A newly trained version enters shadow (its scores start from nothing)."""
    state = SiteState(state)
    if pinned:
        return _pinned(state, pinned)
    if state in (SiteState.LOCAL, SiteState.PARTIAL):
        return Decision(SiteState.SHADOW, "new version: back to shadow until it earns the traffic")
    return Decision(SiteState.SHADOW, "new version: shadowing the upstream")


def on_rollback(state: SiteState | str, pinned: str | None = None) -> Decision:
    """The active version was withdrawn: the upstream answers until a new one is trained."""
    state = SiteState(state)
    if pinned:
        return _pinned(state, pinned)
    return Decision(SiteState.LEARNING, "rolled back: version withdrawn; upstream answers until a new version")


def pinned_state(pinned: str | None) -> SiteState | None:
    """The state a pin routes the site as (`upstream`: learning), or None (no pin, or a pin that
    names no state). The stored state stays as it was."""
    return _PIN_STATES.get(pinned.strip().lower()) if pinned else None


def _pinned(state: SiteState, pinned: str) -> Decision:
    return Decision(state, f"pinned to {pinned}")
