"""The version registry: a verified version activates; a worse or failed one is kept, never activated."""

from __future__ import annotations

import json

import pytest

from tests.conftest import open_test_store
from tests.support.rows import site_row, training_result
from understudy.routing.actions import ActionError, pin, rollback
from understudy.routing.registry import apply_decision, list_versions, register_version


@pytest.fixture
def store(tmp_path):
    store = open_test_store(tmp_path / "u.duckdb")
    store.write_batch([site_row("s1", "site", header="site", arg_names=[], schema_name="Level")])
    yield store
    store.close()


def result(validator_rate, *, verified=True, error=None):
    return training_result(validator_rate, verified=verified, error=error)


def test_versions_activate_only_when_verified_and_not_worse(store):
    v1 = register_version(store, "s1", result(0.6))
    assert v1.status == "active" and store.resolve_site("s1").state == "shadow"
    v2 = register_version(store, "s1", result(0.4))
    assert v2.status == "rejected" and "validator_pass_rate 0.40 < current 0.60" in v2.note
    v3 = register_version(store, "s1", result(0.9, verified=False))
    assert v3.status == "failed"
    v4 = register_version(store, "s1", result(None, error="RuntimeError: out of memory"))
    assert v4.status == "failed" and v4.note == "RuntimeError: out of memory"
    assert store.resolve_site("s1").active_version == 1
    v5 = register_version(store, "s1", result(0.8))
    assert v5.status == "active" and store.resolve_site("s1").active_version == 5
    assert [v.status for v in list_versions(store, "s1")] == ["retired", "rejected", "failed", "failed", "active"]


def test_rejected_and_failed_versions_are_never_served(store):
    register_version(store, "s1", result(0.6))
    register_version(store, "s1", result(0.1))
    with pytest.raises(ActionError, match="rejected"):
        pin(store, "s1", "local@v2")
    with pytest.raises(ActionError, match="rejected"):
        rollback(store, "s1", to_version=2)
    assert pin(store, "s1", "local@v1").pinned == "local@v1"
    with pytest.raises(ActionError, match="pin target"):
        pin(store, "s1", "upstream@v1")


def test_an_inconclusive_version_is_marked_so_stays_usable_and_a_rejected_one_is_not(store):
    from understudy.routing.policy import Decision, SiteState, Verdict

    register_version(store, "s1", result(0.6))
    site = store.resolve_site("s1")
    apply_decision(
        store, site, Decision(SiteState.LEARNING, "inconclusive: ...", verdict=Verdict.INCONCLUSIVE), expected=site
    )
    assert [v.status for v in list_versions(store, "s1")] == ["inconclusive"]
    entry = json.loads(
        store.cursor()
        .execute("SELECT detail FROM audit WHERE site_id = 's1' AND action = 'state' ORDER BY ts DESC LIMIT 1")
        .fetchone()[0]
    )
    assert entry["verdict"] == "inconclusive" and entry["to"] == "learning"
    # a new version does not overwrite the verdict; the inconclusive one may still be pinned
    register_version(store, "s1", result(0.7))
    assert [v.status for v in list_versions(store, "s1")] == ["inconclusive", "active"]
    assert pin(store, "s1", "local@v1").pinned == "local@v1"
    # the control: a rejected decision leaves the version's status alone (it stays the active one)
    site = store.resolve_site("s1")
    apply_decision(store, site, Decision(SiteState.LEARNING, "rejected: ...", verdict=Verdict.REJECTED))
    assert [v.status for v in list_versions(store, "s1")] == ["inconclusive", "active"]


def test_the_active_version_the_policy_sent_back_to_learning_can_be_shadowed_again(store):
    """`rollback --to` the active version: refused while it shadows or serves; once the policy has
    retired it inconclusive (or rejected it), it shadows again on fresh evidence."""
    from understudy.routing.policy import Decision, SiteState, Verdict

    register_version(store, "s1", result(0.6))
    with pytest.raises(ActionError, match="already the active version"):
        rollback(store, "s1", to_version=1)  # the control: still shadowing
    site = store.resolve_site("s1")
    apply_decision(store, site, Decision(SiteState.LEARNING, "inconclusive: ...", verdict=Verdict.INCONCLUSIVE))
    since = "SELECT state_since FROM sites WHERE id = 's1'"
    retired_at = store.cursor().execute(since).fetchone()[0]
    again = rollback(store, "s1", to_version=1)
    assert (again.state, again.active_version) == ("shadow", 1)
    assert store.cursor().execute(since).fetchone()[0] > retired_at  # its evidence starts afresh
    assert [v.status for v in list_versions(store, "s1")] == ["active"]
    actor, detail = (
        store.cursor()
        .execute("SELECT actor, detail FROM audit WHERE site_id = 's1' AND action = 'state' ORDER BY ts DESC LIMIT 1")
        .fetchone()
    )
    assert actor == "cli" and "shadowed again by hand" in json.loads(detail)["reason"]


def test_a_first_version_is_not_measured_against_a_control(store):
    """A shuffled control parses every held-out answer; the first trained version is judged by the
    policy in shadow, not rejected at registration for parsing fewer. The control: the same
    version after a trained one that parses all of them is rejected."""
    register_version(
        store, "s1", training_result(None, control="shuffled", metrics={"heldout": {"parse_valid_rate": 1.0}})
    )
    first = register_version(store, "s1", training_result(None, metrics={"heldout": {"parse_valid_rate": 0.62}}))
    assert first.status == "active" and store.resolve_site("s1").active_version == first.version
    register_version(store, "s1", training_result(None, metrics={"heldout": {"parse_valid_rate": 1.0}}))
    worse = register_version(store, "s1", training_result(None, metrics={"heldout": {"parse_valid_rate": 0.62}}))
    assert worse.status == "rejected" and "parse_valid_rate 0.62 < current 1.00" in worse.note
