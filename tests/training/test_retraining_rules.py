"""When the scheduler gives a site a new version (`understudy.training_jobs.retraining_reason`), at the
default settings (50 examples, growth 2x), on both stores: the first version, growth since the last
version, a rejected, inconclusive or demoted version once new data has arrived; and not otherwise
(a version still being judged or promoted without growth, controls, invalid answers, a verdict
superseded by a later promotion)."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import open_test_store

from understudy.routing.policy import Decision, SiteState, Verdict
from understudy.routing.registry import apply_decision, register_version
from understudy.settings import Settings
from understudy.training_jobs import retraining_reason, training_candidates

STORE_BACKENDS = ("duckdb", "postgresql")
DEFAULTS = Settings.model_fields
MIN_EXAMPLES = DEFAULTS["train_min_examples"].default
GROWTH = DEFAULTS["train_growth_factor"].default
_ids = itertools.count()


@pytest.fixture
def store(tmp_path):
    opened = open_test_store(tmp_path / "u.duckdb")
    opened.write_batch(sites=[("s1", "pick_color", "function", "byllm", "", None, ["x"], "Color", [], None,
                               datetime.now(timezone.utc), None)])
    yield opened
    opened.close()


def add_calls(store, n: int, *, valid: bool = True) -> None:
    """n answered upstream calls of the site, stamped now (after every version registered so far)."""
    now = datetime.now(timezone.utc)
    rows = []
    for _ in range(n):
        call_id = f"c{next(_ids)}"
        response = '{"choices": [{"message": {"role": "assistant", "content": "{}"}, "finish_reason": "stop"}]}'
        rows.append((call_id, now + timedelta(microseconds=next(_ids)), "s1", "m", "upstream", False, "first", call_id,
                     None, '{"messages": []}', response, 200, None, 12.5, 10, 5, 0.001, valid))
    store.write_batch(calls=rows)


def reason(store) -> str | None:
    return retraining_reason(store, store.resolve_site("s1"), MIN_EXAMPLES, GROWTH)


def trained(store, *, control: str | None = None):
    return register_version(store, "s1", {"verified": True, "adapter_path": "/a.gguf", "base_gguf": "/b.gguf",
                                          "config": {}, "metrics": {}, "control": control})


def verdict(store, what: Verdict, to: SiteState = SiteState.LEARNING) -> None:
    apply_decision(store, store.resolve_site("s1"), Decision(to, f"{what.value}: test", verdict=what))


def test_the_first_version_waits_for_enough_usable_examples_and_controls_do_not_count(store):
    add_calls(store, MIN_EXAMPLES - 1)
    add_calls(store, 10, valid=False)  # invalid answers are not examples
    assert reason(store) is None
    trained(store, control="base")  # a control is not a trained version ...
    add_calls(store, 1)
    assert reason(store) is None  # ... and while it shadows, nothing is trained over it
    verdict(store, Verdict.REJECTED)
    assert reason(store) == f"first version: {MIN_EXAMPLES} usable examples"


def test_a_version_is_retrained_when_its_data_has_grown_by_the_factor_and_not_before(store):
    add_calls(store, MIN_EXAMPLES)
    trained(store)
    grown = int(MIN_EXAMPLES * GROWTH)
    add_calls(store, grown - MIN_EXAMPLES - 1)
    assert reason(store) is None  # still shadowing, not yet twice the data
    verdict(store, Verdict.PROMOTED, SiteState.LOCAL)
    assert reason(store) is None  # promoted: no verdict calling for a new version, no growth yet
    add_calls(store, 1)
    assert reason(store).startswith(f"usable examples grew {MIN_EXAMPLES} -> {grown} (x2.0 >= x2) since v1")


@pytest.mark.parametrize("what", [Verdict.REJECTED, Verdict.INCONCLUSIVE, Verdict.DEMOTED])
def test_a_rejected_inconclusive_or_demoted_version_is_retrained_once_new_data_arrives(store, what):
    add_calls(store, MIN_EXAMPLES * 2)
    trained(store)
    if what is Verdict.DEMOTED:
        verdict(store, Verdict.PROMOTED, SiteState.LOCAL)  # demoted from local, after drift
    verdict(store, what, SiteState.SHADOW if what is Verdict.DEMOTED else SiteState.LEARNING)
    add_calls(store, MIN_EXAMPLES - 1)
    assert reason(store) is None  # the same data would train the same version
    add_calls(store, 1)
    assert reason(store) == f"v1 {what.value}: {MIN_EXAMPLES} new usable examples since, {MIN_EXAMPLES * 3} in all"


def test_a_verdict_superseded_by_a_promotion_no_longer_calls_for_a_version(store):
    add_calls(store, MIN_EXAMPLES * 2)
    trained(store)
    verdict(store, Verdict.DEMOTED, SiteState.SHADOW)
    verdict(store, Verdict.PROMOTED, SiteState.LOCAL)  # it earned the traffic back
    add_calls(store, MIN_EXAMPLES)
    assert reason(store) is None


def test_candidates_carry_their_reason_and_wait_for_the_quiet_window(store):
    add_calls(store, MIN_EXAMPLES)
    rules = {"min_examples": MIN_EXAMPLES, "growth_factor": GROWTH}
    candidates, _ = training_candidates(store, rules)
    assert candidates == [("s1", f"first version: {MIN_EXAMPLES} usable examples")]
    hour = datetime.now().hour
    closed = f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"
    assert training_candidates(store, {**rules, "quiet_hours": closed})[0] == []
    with pytest.raises(ValueError, match="growth_factor"):
        training_candidates(store, {**rules, "growth_factor": 1.0})
