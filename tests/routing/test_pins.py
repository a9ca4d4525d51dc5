"""A pin routes a site; it never moves the site's stored state, whatever the policy sees meanwhile.

Before, a pin naming a state (`local`, `upstream`) moved the site there whenever the policy
next looked at it: a second answer scored just after the pin did it, or nothing did. An unpin
then left the site `local` without a sample, or where it was, depending on timing (the
scale-out test caught it under load). Here the policy looks at the site for certain: the
router scores the teacher's second answer, which makes it decide, on a real store.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from tests.conftest import open_test_store
from tests.support.routers import router_over
from tests.support.rows import site_row, training_result
from understudy.inference.local_model import LocalAnswer
from understudy.routing.actions import pin
from understudy.routing.registry import register_version
from understudy.routing.router import Plan, Router
from understudy.rows import SelfAgreementRow, ShadowRow
from understudy.store import Store

ANSWER = json.dumps({"color": "teal"})
REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Pick a color."}],
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "Color",
            "schema": {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]},
        },
    },
}


@pytest.fixture
def store(tmp_path):
    store = open_test_store(tmp_path / "understudy.duckdb")
    yield store
    store.close()


def shadowing_site_far_worse_than_the_teacher(store: Store) -> str:
    """A site in shadow with v1: 30 shadow samples that disagree with the teacher, which agrees
    with itself on 30 second answers."""
    store.write_batch([site_row("s1", "pick_color")])
    register_version(store, "s1", training_result(1.0))
    assert store.resolve_site("s1").state == "shadow"
    later = datetime.now(UTC) + timedelta(seconds=1)
    compared = json.dumps({"compared_fields": 1})
    samples = [ShadowRow(f"c{n}", "s1", 1, later, 0.0, compared, True, True, 5.0, 5.0, "{}", True) for n in range(30)]
    second_answers = [
        SelfAgreementRow(f"t{n}", f"t{n}-2", "s1", later, 1.0, compared, True, True, True) for n in range(30)
    ]
    store.write_batch(shadows=samples, self_agreement=second_answers)
    return "s1"


def router_on(store: Store) -> Router:
    router = router_over(store)
    router.load()
    return router


def policy_looks_at(store: Store, site_id: str) -> None:
    """Score one second answer of the teacher: the router then decides on the site."""
    router = router_on(store)
    anyio.run(router.observe_second_opinion, site_id, "first", "second", "conv", REQUEST, ANSWER, ANSWER)


@pytest.mark.parametrize("target", ["local", "local@v1", "upstream"])
def test_the_policy_never_moves_a_pinned_site(store, target):
    site_id = shadowing_site_far_worse_than_the_teacher(store)
    pin(store, site_id, target)
    policy_looks_at(store, site_id)
    assert store.resolve_site(site_id).state == "shadow"


def test_control_the_same_site_unpinned_is_rejected_when_the_policy_looks(store):
    site_id = shadowing_site_far_worse_than_the_teacher(store)
    policy_looks_at(store, site_id)
    assert store.resolve_site(site_id).state == "learning"


def test_a_drift_check_of_a_site_pinned_local_in_shadow_is_scored(store, caplog):
    """Pinned local, a shadowing site is served locally and drift-checked: the check is scored
    (its drift window exists though the state is not a serving one; it used to be missing, and
    the scoring failed)."""
    site_id = shadowing_site_far_worse_than_the_teacher(store)
    pin(store, site_id, "local")
    router = router_on(store)
    drift_check = Plan("local", 1, None, also_other=True, phase="drift")
    answer = LocalAnswer(ANSWER, 5.0, 10, 5, confidence=0.9)
    anyio.run(router.observe_pair, site_id, drift_check, "d1", "conv", REQUEST, ANSWER, 5.0, answer)
    assert "shadow scoring failed" not in caplog.text
    assert store.resolve_site(site_id).state == "shadow"
