"""Per-site routing states and the rules that move a site between them.

A site is in one of three states:

    learning ──new version──► shadow ──lower bound ≥ promote──► local
        ▲                       │  ▲                               │
        └─ upper bound < reject─┘  └──── upper bound < demote ─────┘
        (and any state ──rollback──► learning)

- `learning`: the upstream answers; calls are recorded for training. Nothing to evaluate.
- `shadow`: the upstream answers; the site's newest local version runs beside it on a
  `shadow_sample_rate` share of calls and each pair is scored (`routing.scoring`).
- `local`: the local version answers; a `drift_sample_rate` share of calls still goes to the
  upstream too, so agreement keeps being measured after promotion.

Everything here is pure: `decide` looks at the agreement scores of the site's active version
(oldest first; the caller restarts the list when a new version enters shadow) and returns the
next state with a reason a report can show. Only the last `window` scores count, so old
evidence ages out. Storage and the version registry are the caller's business.

Evidence: the Wilson score interval
----------------------------------
Scores are fractions in [0, 1], not pass/fail, so `wilson_interval` takes their *sum* as the
number of successes: n scores with mean p̂ are treated like n trials with p̂·n successes. For a
quantity bounded in [0, 1] the variance is at most p(1 − p), the Bernoulli variance, so the
interval is conservative (never narrower than the scores justify). It stays sensible at small
n and near 0 or 1, where the normal approximation does not.

Rules (two thresholds give hysteresis, so a site near the line does not flap):
- shadow → local: at least `min_samples` scores in the window and the Wilson *lower* bound
  ≥ `promote_threshold` (we are confident agreement is at least that good).
- local → shadow: the Wilson *upper* bound < `demote_threshold` (we are confident agreement
  has fallen below it). No minimum count: the upper bound only drops that low once there is
  enough evidence (three straight zeros at the defaults), and served traffic is at stake.
  The upper bound rather than the mean: a few unlucky samples move the mean, not the bound.
- shadow → learning ("rejected"): after a fair trial of `min_samples`, the upper bound
  < `reject_threshold`: agreement has collapsed, this version will not make it, so stop
  paying for shadow runs and wait for the next one. The reject threshold sits below the
  demote one so that a demoted version stays in shadow, where it can recover from a passing
  drift, unless it keeps getting worse.
- any → learning on rollback (`on_rollback`); learning/shadow/local → shadow when a new
  version arrives (`on_new_version`): a new version must earn the traffic itself, so a site
  that was local goes back to the upstream until it does.
- A pin overrides all of this: a pinned site never changes state automatically. A pin that
  names a state (`learning`, `upstream` as its alias, `shadow`, `local`) holds the site there;
  any other pin value (a version such as "v3") holds the current state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any


class SiteState(str, Enum):
    LEARNING = "learning"
    SHADOW = "shadow"
    LOCAL = "local"


# What a user may write in a pin; "upstream" reads better than "learning" for "never local".
_PIN_STATES = {s.value: s for s in SiteState} | {"upstream": SiteState.LEARNING}


def merge_layers(cls: type, what: str, layers: Sequence[Mapping[str, Any] | None],
                 merge_keys: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Settings layers (global, then per site) merged in order: later layers win, and keys in
    `merge_keys` merge their own dicts key by key. Keys that are not fields of the dataclass
    `cls` raise ValueError: a misspelt setting silently ignored would change routing unseen."""
    known = {f.name for f in fields(cls)}
    merged: dict[str, Any] = {}
    for layer in layers:
        layer = layer or {}
        unknown = set(layer) - known
        if unknown:
            raise ValueError(f"unknown {what} setting(s): {sorted(unknown)}")
        for key, value in layer.items():
            merged[key] = {**merged.get(key, {}), **value} if key in merge_keys else value
    return merged


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a success rate; `successes` may be a sum of [0, 1] scores.

    With no samples the interval is the whole of [0, 1]. z = 1.96 gives 95% confidence.
    """
    if n <= 0:
        return 0.0, 1.0
    p = min(1.0, max(0.0, successes / n))
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


@dataclass(frozen=True)
class PromotionPolicy:
    """Thresholds and sampling for one site; `from_dict` layers per-site overrides on global."""

    min_samples: int = 20  # scores needed before a shadow version can be promoted or rejected
    promote_threshold: float = 0.8  # Wilson lower bound needed for shadow → local
    demote_threshold: float = 0.6  # Wilson upper bound below this: local → shadow
    reject_threshold: float = 0.4  # Wilson upper bound below this: shadow → learning
    window: int = 50  # most recent scores considered; older ones age out
    shadow_sample_rate: float = 1.0  # share of calls run on the local model in shadow
    drift_sample_rate: float = 0.1  # share of calls also sent upstream once local
    z: float = 1.96  # Wilson z: 1.96 is 95% two-sided confidence

    def __post_init__(self) -> None:
        if not 0.0 <= self.reject_threshold <= self.demote_threshold <= self.promote_threshold <= 1.0:
            raise ValueError("need 0 <= reject_threshold <= demote_threshold <= promote_threshold <= 1")
        if self.min_samples < 1 or self.window < self.min_samples:
            # A window smaller than min_samples could never hold enough scores to promote.
            raise ValueError("need 1 <= min_samples <= window")
        for name in ("shadow_sample_rate", "drift_sample_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.z <= 0:
            raise ValueError("z must be > 0")

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None
    ) -> PromotionPolicy:
        """Global settings, then per-site `overrides` on top (a site sets only what differs).

        Unknown keys raise ValueError: a misspelt threshold silently ignored would change
        routing without anyone noticing.
        """
        return cls(**merge_layers(cls, "promotion", (data, overrides)))

    def sample_rate(self, state: SiteState) -> float:
        """Share of calls on which both models run (and a score is produced) in `state`."""
        return {
            SiteState.LEARNING: 0.0,
            SiteState.SHADOW: self.shadow_sample_rate,
            SiteState.LOCAL: self.drift_sample_rate,
        }[SiteState(state)]


@dataclass(frozen=True)
class AgreementStats:
    """Summary of the scores a decision was based on."""

    n: int
    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, scores: Sequence[float], z: float = 1.96) -> AgreementStats:
        total = float(sum(scores))
        low, high = wilson_interval(total, len(scores), z)
        return cls(len(scores), total / len(scores) if scores else 0.0, low, high)

    def __str__(self) -> str:
        return f"{self.n} samples, agreement {self.mean:.2f} [{self.low:.2f}, {self.high:.2f}]"


@dataclass(frozen=True)
class Decision:
    new_state: SiteState
    reason: str  # one line for reports and logs
    stats: AgreementStats | None = None


def decide(
    state: SiteState | str,
    scores: Sequence[float],
    policy: PromotionPolicy,
    pinned: str | None = None,
) -> Decision:
    """The state a site should be in, given its active version's scores (oldest first)."""
    state = SiteState(state)
    if pinned:
        return _pinned(state, pinned)
    if state is SiteState.LEARNING:
        return Decision(state, "learning: waiting for a trained version to shadow")

    stats = AgreementStats.of(list(scores)[-policy.window :], policy.z)
    if state is SiteState.SHADOW:
        if stats.n < policy.min_samples:
            return Decision(state, f"shadow: {stats}; {policy.min_samples} samples needed", stats)
        if stats.low >= policy.promote_threshold:
            return Decision(SiteState.LOCAL, f"promoted: {stats} ≥ {policy.promote_threshold:.2f}", stats)
        if stats.high < policy.reject_threshold:
            return Decision(
                SiteState.LEARNING,
                f"rejected: {stats}, upper bound {stats.high:.3f} < {policy.reject_threshold:.2f}; "
                "back to learning for a new version",
                stats,
            )
        return Decision(state, f"shadow: {stats}; lower bound below {policy.promote_threshold:.2f}", stats)

    # LOCAL
    if stats.n and stats.high < policy.demote_threshold:
        reason = f"demoted: {stats}, upper bound {stats.high:.3f} < {policy.demote_threshold:.2f}"
        return Decision(SiteState.SHADOW, reason, stats)
    return Decision(state, f"local: {stats}", stats)


def on_new_version(state: SiteState | str, pinned: str | None = None) -> Decision:
    """A newly trained version enters shadow (its scores start from nothing)."""
    state = SiteState(state)
    if pinned:
        return _pinned(state, pinned)
    if state is SiteState.LOCAL:
        return Decision(SiteState.SHADOW, "new version: back to shadow until it earns the traffic")
    return Decision(SiteState.SHADOW, "new version: shadowing the upstream")


def on_rollback(state: SiteState | str, pinned: str | None = None) -> Decision:
    """The active version was withdrawn: the upstream answers until a new one is trained."""
    state = SiteState(state)
    if pinned:
        return _pinned(state, pinned)
    return Decision(SiteState.LEARNING, "rolled back: version withdrawn; upstream answers until a new version")


def _pinned(state: SiteState, pinned: str) -> Decision:
    pinned_state = _PIN_STATES.get(pinned.strip().lower())
    if pinned_state is not None:
        return Decision(pinned_state, f"pinned to {pinned}")
    return Decision(state, f"pinned ({pinned}): {state.value} held")
