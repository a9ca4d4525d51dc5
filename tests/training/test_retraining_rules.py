"""When the scheduler gives a site a new version (`understudy.training.jobs.retraining_reason`), at the
default settings (50 examples, growth 2x), on both stores: the first version, growth since the last
version, a rejected, inconclusive or demoted version once new data has arrived; and not otherwise
(a version still being judged, whatever the growth, or promoted without growth, controls, invalid
answers, a verdict superseded by a later promotion)."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import open_test_store
from tests.support.rows import call_row, site_row, training_result
from understudy.routing.actions import rollback
from understudy.routing.policy import Decision, SiteState, Verdict
from understudy.routing.registry import apply_decision, register_version
from understudy.settings import Settings
from understudy.training.jobs import retraining_reason, retraining_status, training_candidates, training_schedule

STORE_BACKENDS = ("duckdb", "postgresql")
DEFAULTS = Settings.model_fields
MIN_EXAMPLES = DEFAULTS["train_min_examples"].default
GROWTH = DEFAULTS["train_growth_factor"].default
_ids = itertools.count()


@pytest.fixture
def store(tmp_path):
    opened = open_test_store(tmp_path / "u.duckdb")
    opened.write_batch(sites=[site_row("s1", "pick_color")])
    yield opened
    opened.close()


def add_calls(store, n: int, *, valid: bool = True) -> None:
    """n answered upstream calls of the site, stamped now (after every version registered so far)."""
    now = datetime.now(UTC)
    rows = []
    for i in range(n):
        # a microsecond apart from now on; not by the session-wide id counter, which after a few
        # thousand calls in one worker stamped calls milliseconds ahead, after a version registered next
        rows.append(call_row(f"c{next(_ids)}", "s1", ts=now + timedelta(microseconds=i), valid=valid))
    store.write_batch(calls=rows)


def reason(store) -> str | None:
    return retraining_reason(store, store.resolve_site("s1"), MIN_EXAMPLES, GROWTH)


def trained(store, *, control: str | None = None):
    return register_version(store, "s1", training_result(metrics={}, control=control))


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


def test_nothing_is_trained_over_a_version_while_it_shadows_undecided_whatever_the_growth(store):
    add_calls(store, MIN_EXAMPLES)
    trained(store)
    assert store.resolve_site("s1").state == SiteState.SHADOW.value
    add_calls(store, int(MIN_EXAMPLES * GROWTH) * 2)  # x5 the data, all of it while v1 shadows
    assert status(store) == (
        False,
        f"waiting: v1 is shadowing until it is decided; trained on {MIN_EXAMPLES} usable examples, "
        f"{MIN_EXAMPLES * 5} now",
    )
    # A pin to a version freezes the site's state, so v1 would never be decided: growth goes on.
    store.cursor().execute("UPDATE sites SET pinned = 'v1' WHERE id = 's1'")
    assert reason(store).startswith(f"usable examples grew {MIN_EXAMPLES} -> {MIN_EXAMPLES * 5}")
    store.cursor().execute("UPDATE sites SET pinned = NULL WHERE id = 's1'")
    # control: the same growth calls for a new version as soon as v1 is decided, either way
    verdict(store, Verdict.PARTIAL, SiteState.PARTIAL)  # its confident subset served: a decision
    assert reason(store).startswith(f"usable examples grew {MIN_EXAMPLES} -> {MIN_EXAMPLES * 5} (x5.0 >= x2)")
    verdict(store, Verdict.PROMOTED, SiteState.LOCAL)
    assert reason(store).startswith(f"usable examples grew {MIN_EXAMPLES} -> {MIN_EXAMPLES * 5} (x5.0 >= x2)")
    # An older version an operator shadows again (`rollback --to` from partial) is not trained over either.
    time.sleep(0.05)  # the version comes after the calls add_calls stamped a few microseconds ahead
    trained(store)
    verdict(store, Verdict.PARTIAL, SiteState.PARTIAL)
    add_calls(store, MIN_EXAMPLES * 5)
    assert reason(store).startswith(f"usable examples grew {MIN_EXAMPLES * 5} -> {MIN_EXAMPLES * 10} (x2.0 >= x2)")
    rollback(store, "s1", to_version=1)
    assert status(store) == (
        False,
        f"waiting: v1 is shadowing until it is decided; v2 on {MIN_EXAMPLES * 5}, {MIN_EXAMPLES * 10} now",
    )


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


def status(store) -> tuple[bool, str]:
    return retraining_status(store, store.resolve_site("s1"), MIN_EXAMPLES, GROWTH)


def test_the_schedule_says_why_a_site_waits_as_well_as_why_it_trains(store):
    add_calls(store, MIN_EXAMPLES - 1)
    assert status(store) == (
        False,
        f"waiting: {MIN_EXAMPLES - 1} of {MIN_EXAMPLES} usable examples for a first version",
    )
    trained(store, control="base")
    assert status(store) == (False, "waiting: the base control v1 is shadowing until it is decided")
    verdict(store, Verdict.REJECTED)
    add_calls(store, 1)
    assert status(store) == (True, f"first version: {MIN_EXAMPLES} usable examples")
    time.sleep(0.05)  # add_calls stamps calls a few microseconds ahead; the version comes after them
    trained(store)
    assert status(store) == (
        False,
        f"waiting: v2 is shadowing until it is decided; trained on {MIN_EXAMPLES} usable examples, {MIN_EXAMPLES} now",
    )
    verdict(store, Verdict.PROMOTED, SiteState.LOCAL)
    assert status(store) == (
        False,
        f"waiting: v2 active, trained on {MIN_EXAMPLES} usable examples; {MIN_EXAMPLES} now, "
        f"a new version at {int(MIN_EXAMPLES * GROWTH)} (x{GROWTH:g})",
    )
    verdict(store, Verdict.DEMOTED, SiteState.SHADOW)
    verdict(store, Verdict.INCONCLUSIVE)
    add_calls(store, 3)
    assert status(store) == (False, f"waiting: v2 inconclusive; 3 of {MIN_EXAMPLES} new usable examples since")
    add_calls(store, MIN_EXAMPLES)
    assert status(store)[0]
    # Pinned to upstream a new version would never shadow: nothing is trained (a pin to a version is no such pin).
    store.cursor().execute("UPDATE sites SET pinned = 'upstream' WHERE id = 's1'")
    assert status(store) == (False, "never while pinned to upstream (`understudy unpin` resumes training)")
    store.cursor().execute("UPDATE sites SET pinned = 'v2' WHERE id = 's1'")
    assert status(store)[0]


def test_the_schedule_lists_each_job_with_its_reason_and_outcome(store, tmp_path):
    import json

    from understudy.routing.registry import audit

    add_calls(store, MIN_EXAMPLES)
    rules = {"min_examples": MIN_EXAMPLES, "growth_factor": GROWTH}
    schedule = training_schedule(store, rules)
    assert schedule["quiet"] and schedule["jobs"] == []
    assert [(s["id"], s["due"]) for s in schedule["sites"]] == [("s1", True)]
    # Two jobs the scheduler started: one still running, one that failed.
    running, failed = tmp_path / "job-1", tmp_path / "job-2"
    for out_dir in (running, failed):
        out_dir.mkdir()
        audit(
            store,
            "s1",
            "training",
            {"scheduled": "first version: 50 usable examples", "out_dir": str(out_dir)},
            "scheduler",
        )
    (failed / "result.json").write_text(json.dumps({"error": "NonFiniteLoss: loss is nan at step 3"}))
    schedule = training_schedule(store, rules)
    outcomes = {j["out_dir"]: j["outcome"] for j in schedule["jobs"]}
    assert outcomes == {str(running): "queued or running", str(failed): "failed: NonFiniteLoss: loss is nan at step 3"}
    # The failed job was audited last, so nothing is pending: the site is due again. The control:
    # a job audited after it and still running holds the scheduler back.
    assert schedule["sites"][0]["due"]
    audit(store, "s1", "training", {"started": "`understudy train`", "out_dir": str(running)}, "cli")
    waiting = training_schedule(store, rules)["sites"][0]
    assert not waiting["due"] and waiting["reason"].startswith("waiting: a job started ")
    assert waiting["reason"].endswith("is queued or running (`understudy train`)")
    # The running one finishes (its worker writes result.json) and is registered: its version is its outcome.
    (running / "result.json").write_text(json.dumps({"error": None}))
    register_version(
        store,
        "s1",
        {
            "verified": True,
            "adapter_path": str(running / "adapter.gguf"),
            "base_gguf": "/b.gguf",
            "config": {},
            "metrics": {},
        },
    )
    outcomes = {j["out_dir"]: j["outcome"] for j in training_schedule(store, rules)["jobs"]}
    assert outcomes[str(running)] == "v1 active"
    hour = datetime.now().hour
    closed = training_schedule(store, {**rules, "quiet_hours": f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"})
    assert not closed["quiet"] and closed["sites"][0]["reason"].startswith("waiting: v1 is shadowing")


@pytest.mark.parametrize("operator", ["shadowed again", "promoted by hand"])
def test_a_verdict_superseded_by_an_operator_no_longer_calls_for_a_version(store, operator):
    from understudy.routing.actions import promote, rollback

    add_calls(store, MIN_EXAMPLES * 2)
    trained(store)
    verdict(store, Verdict.INCONCLUSIVE)
    if operator == "shadowed again":
        rollback(store, "s1", to_version=1)
    else:
        promote(store, "s1", 1)
    add_calls(store, MIN_EXAMPLES)
    assert reason(store) is None  # the control, the verdict alone: the parametrized test above
