"""Promotion policy: Wilson intervals, the site state machine, pins and per-site settings."""

from __future__ import annotations

import pytest

from routing.policy import (
    Decision,
    PromotionPolicy,
    SiteState,
    decide,
    on_new_version,
    on_rollback,
    wilson_interval,
)

POLICY = PromotionPolicy()


# --- Wilson score interval ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "n", "expected"),
    [
        (8, 10, (0.4902, 0.9433)),  # the textbook example
        (0, 10, (0.0, 0.2775)),
        (10, 10, (0.7225, 1.0)),
        (50, 100, (0.4038, 0.5962)),
        (20, 20, (0.8389, 1.0)),
    ],
)
def test_wilson_interval_known_values(successes, n, expected):
    low, high = wilson_interval(successes, n)
    assert low == pytest.approx(expected[0], abs=1e-4)
    assert high == pytest.approx(expected[1], abs=1e-4)


def test_wilson_interval_without_samples_is_everything():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_takes_fractional_successes():
    # Twenty scores of 0.9 are treated like 18 successes in 20 trials.
    assert wilson_interval(20 * 0.9, 20) == pytest.approx(wilson_interval(18, 20))
    low, high = wilson_interval(9.5, 10)
    assert wilson_interval(9, 10)[0] < low < wilson_interval(10, 10)[0]


def test_wilson_interval_narrows_with_evidence_and_honours_z():
    narrow = wilson_interval(90, 100)
    wide = wilson_interval(9, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    strict = wilson_interval(9, 10, z=2.576)  # 99%
    assert strict[0] < wide[0] and strict[1] > wide[1]


# --- the state machine --------------------------------------------------------------------


def test_full_walk_learning_shadow_local_shadow_learning():
    transitions: list[tuple[str, str, str]] = []

    def step(state: SiteState, decision: Decision) -> SiteState:
        if decision.new_state is not state:
            transitions.append((state.value, decision.new_state.value, decision.reason))
        return decision.new_state

    state = SiteState.LEARNING
    assert decide(state, [0.9] * 100, POLICY).new_state is SiteState.LEARNING  # nothing to shadow yet
    state = step(state, on_new_version(state))
    assert state is SiteState.SHADOW

    # Shadow: perfect agreement, but promotion waits for min_samples (20).
    scores: list[float] = []
    for i in range(1, 21):
        scores.append(1.0)
        state = step(state, decide(state, scores, POLICY))
        assert state is (SiteState.LOCAL if i == 20 else SiteState.SHADOW), i

    # Local: drift sampling starts returning zeros; the upper bound falls below 0.60.
    zeros_to_demote = 0
    while state is SiteState.LOCAL:
        scores.append(0.0)
        zeros_to_demote += 1
        state = step(state, decide(state, scores, POLICY))
    assert zeros_to_demote == 24  # 20/44: mean 0.45, upper bound 0.599

    # Shadow again: still bad; once the upper bound falls below 0.40 the version is rejected.
    assert decide(state, scores + [0.0], POLICY).new_state is SiteState.SHADOW
    while state is SiteState.SHADOW:
        scores.append(0.0)
        state = step(state, decide(state, scores, POLICY))
    assert state is SiteState.LEARNING
    assert len(scores) == 57  # the window keeps the last 50: 13 ones, 37 zeros

    assert [(a, b) for a, b, _ in transitions] == [
        ("learning", "shadow"),
        ("shadow", "local"),
        ("local", "shadow"),
        ("shadow", "learning"),
    ]
    reasons = [r for _, _, r in transitions]
    assert reasons[1] == "promoted: 20 samples, agreement 1.00 [0.84, 1.00] ≥ 0.80"
    assert reasons[2].startswith("demoted: 44 samples, agreement 0.45 [0.32, 0.60], upper bound 0.599 < 0.60")
    assert reasons[3].startswith("rejected: 50 samples, agreement 0.26")


def test_shadow_in_between_stays_in_shadow():
    decision = decide(SiteState.SHADOW, [0.7] * 40, POLICY)
    assert decision.new_state is SiteState.SHADOW
    assert "lower bound below 0.80" in decision.reason
    assert decision.stats is not None and decision.stats.n == 40


def test_fractional_scores_promote_when_confidently_high():
    assert decide(SiteState.SHADOW, [0.95] * 24, POLICY).new_state is SiteState.SHADOW  # lower 0.79
    assert decide(SiteState.SHADOW, [0.95] * 40, POLICY).new_state is SiteState.LOCAL


def test_a_few_bad_samples_do_not_demote_a_local_site():
    assert decide(SiteState.LOCAL, [0.0, 0.0], POLICY).new_state is SiteState.LOCAL
    assert decide(SiteState.LOCAL, [0.0, 0.0, 0.0], POLICY).new_state is SiteState.SHADOW
    assert decide(SiteState.LOCAL, [1.0] * 30 + [0.0] * 3, POLICY).new_state is SiteState.LOCAL
    assert decide(SiteState.LOCAL, [], POLICY).new_state is SiteState.LOCAL


def test_only_the_window_counts():
    old_good_new_bad = [1.0] * 100 + [0.2] * 20
    small_window = PromotionPolicy(window=20)
    assert decide(SiteState.LOCAL, old_good_new_bad, POLICY).new_state is SiteState.LOCAL
    assert decide(SiteState.LOCAL, old_good_new_bad, small_window).new_state is SiteState.SHADOW


def test_new_version_and_rollback_events():
    assert on_new_version(SiteState.LEARNING).new_state is SiteState.SHADOW
    assert on_new_version(SiteState.SHADOW).new_state is SiteState.SHADOW
    assert on_new_version(SiteState.LOCAL).new_state is SiteState.SHADOW
    for state in SiteState:
        decision = on_rollback(state)
        assert decision.new_state is SiteState.LEARNING and decision.reason.startswith("rolled back")


# --- pins ---------------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(SiteState))
def test_a_pinned_site_never_moves_on_its_own(state):
    for scores in ([], [1.0] * 50, [0.0] * 50):
        assert decide(state, scores, POLICY, pinned="v3").new_state is state
    assert on_new_version(state, pinned="v3").new_state is state
    assert on_rollback(state, pinned="v3").new_state is state
    assert "pinned (v3)" in decide(state, [], POLICY, pinned="v3").reason


def test_a_pin_naming_a_state_holds_the_site_there():
    assert decide(SiteState.SHADOW, [1.0] * 50, POLICY, pinned="shadow").new_state is SiteState.SHADOW
    assert decide(SiteState.SHADOW, [0.0] * 50, POLICY, pinned="local").new_state is SiteState.LOCAL
    upstream = decide(SiteState.LOCAL, [1.0] * 50, POLICY, pinned="upstream")
    assert upstream.new_state is SiteState.LEARNING and upstream.reason == "pinned to upstream"


# --- configuration ------------------------------------------------------------------------


def test_per_site_overrides_merge_over_global_settings():
    global_cfg = {"min_samples": 30, "promote_threshold": 0.85, "drift_sample_rate": 0.05}
    site_cfg = {"promote_threshold": 0.7, "window": 100}
    policy = PromotionPolicy.from_dict(global_cfg, site_cfg)
    assert policy.min_samples == 30  # global
    assert policy.promote_threshold == 0.7  # site wins
    assert policy.window == 100
    assert policy.drift_sample_rate == 0.05
    assert policy.demote_threshold == 0.6  # default
    assert PromotionPolicy.from_dict(None) == PromotionPolicy()

    # The looser site threshold promotes where the global one would not.
    scores = [0.9] * 30
    assert decide(SiteState.SHADOW, scores, PromotionPolicy.from_dict(global_cfg)).new_state is SiteState.SHADOW
    assert decide(SiteState.SHADOW, scores, policy).new_state is SiteState.LOCAL


@pytest.mark.parametrize(
    "bad",
    [
        {"promote_treshold": 0.9},  # misspelt
        {"promote_threshold": 0.5},  # below the demote threshold
        {"reject_threshold": 0.7},  # above the demote threshold
        {"window": 10},  # smaller than min_samples
        {"shadow_sample_rate": 1.5},
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
