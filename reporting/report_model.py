"""The report's data model: one `SiteReport` per site, plain frozen dataclasses whose `to_dict()`
is JSON-ready. `reporting.report` builds them from the store (and says what each number means),
`reporting.report_text` writes them as lines and terminal panels, `reporting.report_html` as a page.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from understudy.routing.policy import Bounds


class Prices(Protocol):
    """What `build_report` needs from a price table (e.g. `pricing.PriceTable`)."""

    def cost(self, model: str | None, prompt_tokens: int | None, completion_tokens: int | None) -> float | None: ...


@dataclass(frozen=True)
class AgreementSummary:
    """Shadow scores of one version: count, mean and confidence-sequence bounds."""

    version: int
    samples: int  # comparable shadow results: what the policy counts
    incomparable: int  # upstream answer unusable: nothing to agree with, not scored
    mean: float | None
    low: float  # confidence-sequence bounds; [0, 1] with no samples
    high: float
    local_valid_rate: float | None  # share of local answers that passed the gate (all results)
    upstream_valid_rate: float | None = None  # the upstream's answers on the same calls

    def format(self) -> str:
        """`0.91 [0.84, 0.95]`, or a dash with no samples."""
        if not self.samples or self.mean is None:
            return "—"
        return f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}]"


@dataclass(frozen=True)
class VersionInfo:
    version: int
    status: str  # ready | rejected | failed | active | retired
    base_model: str | None
    created_at: str  # ISO 8601, UTC
    note: str | None
    metrics: dict[str, Any]
    shadow: AgreementSummary
    control: str | None = None  # base | shuffled: a negative control


@dataclass(frozen=True)
class LatencyStats:
    n: int
    p50: float | None  # milliseconds
    p95: float | None


@dataclass(frozen=True)
class LatencySummary:
    upstream: LatencyStats  # calls the upstream served
    local: LatencyStats  # calls the local model served
    shadow_local: LatencyStats  # the reported version beside the upstream, in shadow
    shadow_upstream: LatencyStats  # the upstream on those same shadowed calls


@dataclass(frozen=True)
class CostSummary:
    upstream_spent_usd: float
    upstream_priced_calls: int  # upstream calls with a known (or estimated) cost
    estimated_calls: int  # of those, priced now from `prices` rather than recorded
    mean_upstream_cost_usd: float | None
    local_calls: int
    saved_usd: float | None  # None when no upstream call has a cost to compare with


@dataclass(frozen=True)
class AuditEntry:
    ts: str  # ISO 8601, UTC
    action: str
    actor: str
    reason: str
    detail: Any


@dataclass(frozen=True)
class AgreementPoint:
    t: float  # Unix seconds of the newest score in the window
    samples: int  # scores in the rolling window
    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class AgreementSeries:
    version: int
    points: list[AgreementPoint]


@dataclass(frozen=True)
class TrafficPoint:
    t: float  # bucket start, Unix seconds
    upstream: int
    local: int
    local_share: float


@dataclass(frozen=True)
class LatencyPoint:
    t: float
    upstream_p50: float | None
    upstream_p95: float | None
    local_p50: float | None
    local_p95: float | None
    shadow_local_p50: float | None  # any version's shadow runs in this bucket


@dataclass(frozen=True)
class CostPoint:
    t: float
    spent_usd: float  # cumulative
    saved_usd: float  # cumulative


@dataclass(frozen=True)
class TimeSeries:
    bucket_s: int
    agreement: list[AgreementSeries] = field(default_factory=list)
    traffic: list[TrafficPoint] = field(default_factory=list)
    latency: list[LatencyPoint] = field(default_factory=list)
    cost: list[CostPoint] = field(default_factory=list)


@dataclass(frozen=True)
class PolicySummary:
    """The promotion policy the report's judgement uses (global settings + site overrides)."""

    min_samples: int
    margin: float
    alpha: float
    window: int
    shadow_sample_rate: float
    drift_sample_rate: float
    self_agreement_rate: float
    cascade: bool
    max_shadow_samples: int
    overrides: dict = field(default_factory=dict)  # the site's own `understudy policy` settings


@dataclass(frozen=True)
class JudgementSummary:
    """What the policy weighs now: the active version in its current state, against the teacher."""

    phase: str  # shadow (samples since the version entered shadow) | drift (last `window`, while local)
    agreement: Bounds
    reference: Bounds | None  # the teacher's self-agreement; None: no samples (reference 1)
    validity: Bounds  # local valid - upstream valid, paired per call, in [-1, 1]
    margin: float
    bar: float  # the teacher's mean self-agreement minus the margin
    paired: Bounds | None = None  # shadow: same-call local - teacher agreement (routing.policy's paired test)


@dataclass(frozen=True)
class CascadeSummary:
    threshold: float | None  # confidence below which a local answer goes upstream; None: no cascade
    bar: float
    samples: int
    local_share_without: float  # of the version's shadow answers: all would be local
    local_share_with: float
    agreement_without: float | None
    agreement_with: float | None


@dataclass(frozen=True)
class PartialSummary:
    """Partial promotion (routing.partial): the confident subset served, or being tested in shadow."""

    serving: bool  # state partial: answers at or above `threshold` are served locally
    threshold: float | None  # None: not chosen (calibrating, or no subset met the teacher)
    note: str  # how the threshold was chosen, or why there is none
    share: float | None  # of fresh shadow samples at or above the threshold (in shadow)
    agreement: Bounds | None  # the subset's, on fresh samples (in shadow)
    reference: Bounds | None  # the teacher's self-agreement on the same calls (None: none paired, reference 1)
    validity: Bounds | None


@dataclass(frozen=True)
class DrawsSummary:
    """Checked sampling (inference.checked_sampling): local draws per local answer, by where it went."""

    served: int  # local answers served to clients
    served_mean_tries: float | None
    fallbacks: int  # local answers refused after their draws (the upstream answered)
    fallback_mean_tries: float | None
    shadow: int  # the reported version's shadow and drift answers
    shadow_mean_tries: float | None
    shadow_redrawn: float | None  # share of those that needed more than one draw


@dataclass(frozen=True)
class SiteReport:
    id: str
    name: str
    state: str
    pinned: str | None
    active_version: int | None
    reported_version: int | None  # the version `agreement` describes
    calls: int
    upstream_calls: int
    local_calls: int
    local_share: float | None  # None with no calls
    fallbacks: int
    draws: DrawsSummary  # local draws per answer (checked sampling)
    extra_calls: dict[str, int]  # the proxy's own upstream calls: drift checks, self-agreement second answers
    agreement: AgreementSummary | None
    teacher: Bounds | None  # the upstream's self-agreement over the reference window
    judgement: JudgementSummary | None  # what the policy decides on now
    cascade: CascadeSummary | None
    partial: PartialSummary | None  # None: nothing to say (learning, local, or partial promotion off)
    versions: list[VersionInfo]
    latency: LatencySummary
    cost: CostSummary
    audit: list[AuditEntry]  # newest first
    assessment: str  # what `routing.policy.decide` says about the site now
    why: str  # newest explaining audit entry, else the assessment
    policy: PolicySummary
    series: TimeSeries

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: every field is a number, string, None, list or JSON-decoded dict."""
        return asdict(self)
