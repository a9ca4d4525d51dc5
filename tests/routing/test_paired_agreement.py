"""The paired agreement test: on calls the teacher answered twice, local agreement minus the
teacher's own agreement on that request, one confidence sequence on the difference.

The unpaired test needs the version's CS and the reference's CS to clear the margin together,
so a version a little under the teacher (the showcase's `Level`: 0.56 against 0.58) stayed
undecided however long it shadowed; the reference's width is fixed by its window. The paired
test decides it. At the default policy, with controls: the same streams judged by the unpaired
test alone stay undecided; a version worse than the teacher by more than the margin, paired
the same way, is rejected, never promoted; and the router forms each pair once, whichever of
its two scores arrives first, and again from the store after a restart.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
import numpy as np
import pytest

from tests.conftest import open_test_store
from tests.support.routers import router_over
from tests.support.rows import site_row, training_result
from understudy.inference.local_model import LocalAnswer
from understudy.routing.policy import PromotionPolicy, SiteState, Verdict, decide
from understudy.routing.registry import register_version
from understudy.routing.router import Plan, Router
from understudy.store import Store

POLICY = PromotionPolicy()  # the shipped defaults


def scores(rng: np.random.Generator, mean: float, sd: float, n: int) -> list[float]:
    return np.clip(rng.normal(mean, sd, n), 0.0, 1.0).tolist()


def shadow(local: list[float], teacher: list[float], prefill: list[float], paired: bool) -> tuple[str, int]:
    """`decide` after every shadow sample, as the router calls it with a free teacher: every call is
    answered twice (a pair), and its self-agreement joins the sliding reference window."""
    evidence = POLICY.new_evidence(paired=paired)
    window = list(prefill)
    for i, (mine, theirs) in enumerate(zip(local, teacher, strict=True)):
        evidence.add(mine, True, True)
        evidence.add_pair(f"c{i}", mine, theirs)  # ignored by unpaired evidence
        window = (window + [theirs])[-POLICY.reference_window :]
        decision = decide(SiteState.SHADOW, evidence, POLICY.new_reference(paired).extend(window), POLICY)
        if decision.verdict in (Verdict.PROMOTED, Verdict.REJECTED):
            return decision.verdict.value, i + 1
    return "shadow", len(local)


@pytest.fixture(scope="module")
def teacher_stream() -> tuple[list[float], list[float]]:
    """The teacher's self-agreement at Level's measured figures (0.58, sd 0.22): a full reference
    window before the version shadows, then one second answer per shadowed call."""
    rng = np.random.default_rng(20261207)
    return scores(rng, 0.58, 0.22, POLICY.reference_window), scores(rng, 0.58, 0.22, POLICY.max_shadow_samples)


def test_a_version_just_under_the_teacher_is_promoted_by_the_paired_test(teacher_stream):
    prefill, teacher = teacher_stream
    local = scores(np.random.default_rng(1), 0.56, 0.27, POLICY.max_shadow_samples)  # Level's first version
    verdict, at = shadow(local, teacher, prefill, paired=True)
    assert verdict == "promoted" and at <= POLICY.max_shadow_samples
    # control: the same samples, judged by the unpaired test alone, are still undecided at the cap
    assert shadow(local, teacher, prefill, paired=False) == ("shadow", POLICY.max_shadow_samples)


def test_control_a_version_worse_by_more_than_the_margin_is_never_promoted(teacher_stream):
    prefill, teacher = teacher_stream
    just_past = scores(np.random.default_rng(1), 0.45, 0.27, POLICY.max_shadow_samples)  # 0.13 under the teacher
    assert shadow(just_past, teacher, prefill, paired=True)[0] != "promoted"
    far = scores(np.random.default_rng(1), 0.28, 0.27, POLICY.max_shadow_samples)  # 0.30 under
    assert shadow(far, teacher, prefill, paired=True)[0] == "rejected"


def test_the_reason_names_the_paired_difference():
    evidence = POLICY.new_evidence(paired=True)
    for i in range(30):
        evidence.add(0.6, True, True)
        evidence.add_pair(f"c{i}", 0.6, 0.6)
        evidence.add_pair(f"c{i}", 0.0, 1.0)  # a call is paired once: a second pairing is ignored
    assert evidence.paired is not None and evidence.paired.n == 30 and evidence.paired.mean == 0.0
    reason = decide(SiteState.SHADOW, evidence, POLICY.new_reference(True).extend([0.6] * 30), POLICY).reason
    assert "same-call agreement local - teacher +0.00" in reason


# --- the router forms the pairs -------------------------------------------------------------------

COLOR_REQUEST = {
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
TEAL, NAVY = json.dumps({"color": "teal"}), json.dumps({"color": "navy"})


@pytest.fixture
def store(tmp_path):
    store = open_test_store(tmp_path / "understudy.duckdb")
    yield store
    store.close()


def router_recording_into(store: Store) -> Router:
    """A router over a site in shadow whose scored rows are written to the store as the proxy's
    recorder writes them (here at once)."""
    store.write_batch([site_row("s1", "pick_color")])
    register_version(store, "s1", training_result(1.0))
    assert store.resolve_site("s1").state == "shadow"
    router = router_over(store, recording=True)
    router.load()
    return router


def shadow_sample(router: Router, call_id: str, local_text: str) -> Callable[[], None]:
    plan = Plan("upstream", 1, None, also_other=True, phase="shadow")
    answer = LocalAnswer(local_text, 5.0, 10, 5, confidence=0.9)
    return lambda: anyio.run(router.observe_pair, "s1", plan, call_id, call_id, COLOR_REQUEST, TEAL, 5.0, answer)


def second_answer(router: Router, call_id: str, second_text: str) -> Callable[[], None]:
    return lambda: anyio.run(
        router.observe_second_opinion, "s1", call_id, f"{call_id}-2", call_id, COLOR_REQUEST, TEAL, second_text
    )


def test_the_router_pairs_a_call_whichever_score_comes_first_and_again_after_a_restart(store):
    router = router_recording_into(store)
    second_answer(router, "a", TEAL)()  # the teacher's second answer first, then the version's
    shadow_sample(router, "a", NAVY)()
    shadow_sample(router, "b", TEAL)()  # the version's first, then the teacher's
    second_answer(router, "b", NAVY)()
    shadow_sample(router, "c", TEAL)()  # control: no second answer, no pair
    second_answer(router, "d", TEAL)()  # control: no shadow sample, no pair
    live = router.config("s1").evidence
    assert live.agreement.n == 3
    assert live.paired is not None and live.paired.n == 2 and live.paired_calls == {"a", "b"}
    # a: the version disagreed where the teacher agreed with itself; b: the other way round
    assert live.paired.mean == pytest.approx(0.0, abs=1e-9)

    fresh = router_over(store)  # a restarted proxy: the evidence is read back from the store
    fresh.load()
    reloaded = fresh.config("s1").evidence
    assert reloaded.paired is not None and reloaded.paired_calls == {"a", "b"}
    assert reloaded.paired.mean == pytest.approx(live.paired.mean)


def test_served_versions_are_judged_by_the_unpaired_test_alone():
    """Drift checks have no second answers: their evidence has no paired test, and the unpaired
    CSs keep alpha / 2 each."""
    assert POLICY.new_evidence().paired is None
    assert POLICY.unpaired_alpha(False) == POLICY.alpha / 2 and POLICY.unpaired_alpha(True) == POLICY.alpha / 4


def test_a_free_teacher_is_asked_twice_on_every_shadowed_call_once_the_reference_is_full(store):
    router = router_recording_into(store)
    config = router.config("s1")
    config.reference.extend([0.5] * POLICY.reference_window)
    assert sum(router._sample_second_opinion(config, free_upstream=True) for _ in range(200)) == 200
    # control: a paid upstream's second answers drop to a tenth of its rate once the window is full
    paid = sum(router._sample_second_opinion(config, free_upstream=False) for _ in range(2000))
    assert paid < 2000 * POLICY.self_agreement_rate / 2


SIZED_REQUEST = {
    **COLOR_REQUEST,
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "Color",
            "schema": {
                "type": "object",
                "properties": {"color": {"type": "string"}, "size": {"type": "string"}},
                "required": ["color", "size"],
            },
        },
    },
}


def test_both_scores_of_a_call_use_the_same_decoys_however_the_pool_moves_between_them(store):
    """The local answer is scored seconds before or after the teacher's second answer, and the
    decoy pool moves in between (other requests' answers arrive); a pair's difference must not
    carry that move. Here the first decoys share nothing with the answer (chance 0); the later
    ones share its `color` (chance 0.5), which would score the same text 0.5 and then 0."""
    router = router_recording_into(store)
    upstream, answer = json.dumps({"color": "teal", "size": "big"}), json.dumps({"color": "teal", "size": "small"})
    for i in range(5):
        router.remember_answer("s1", f"early-{i}", json.dumps({"color": f"red{i}", "size": f"tiny{i}"}))
    plan = Plan("upstream", 1, None, also_other=True, phase="shadow")
    local = LocalAnswer(answer, 5.0, 10, 5, confidence=0.9)
    anyio.run(router.observe_pair, "s1", plan, "a", "a", SIZED_REQUEST, upstream, 5.0, local)
    for i in range(5):  # sibling requests answered alike: a pool against which the answer looks like chance
        router.remember_answer("s1", f"late-{i}", json.dumps({"color": "teal", "size": f"tiny{i}"}))
    anyio.run(router.observe_second_opinion, "s1", "a", "a-2", "a", SIZED_REQUEST, upstream, answer)

    evidence = router.config("s1").evidence
    assert evidence.paired is not None and evidence.paired_calls == {"a"}
    assert evidence.paired.mean == pytest.approx(0.0, abs=1e-9)  # the same text, the same decoys: no difference
    local_score = store.cursor().execute("SELECT score FROM shadow_results WHERE call_id = 'a'").fetchone()[0]
    teacher_score = store.cursor().execute("SELECT score FROM self_agreement WHERE call_id = 'a'").fetchone()[0]
    assert local_score == teacher_score == pytest.approx(0.5)
    # the control: the same pair scored now on the moved pool, as before, comes out another score
    moved = router.score("s1", SIZED_REQUEST, "a", upstream, answer)
    assert moved.score == pytest.approx(0.0) and moved.components["chance"] == pytest.approx(0.5)


class _AnswersAfterThePoolMoves:
    """The local side of a shadowed call as the router awaits it: while the model takes its
    seconds, sibling requests' upstream answers arrive (here: as it is asked)."""

    def __init__(self, router: Router, text: str):
        self.router, self.text = router, text

    async def complete(self, request, variant, *, background=False, checks=None) -> LocalAnswer:
        for i in range(5):
            self.router.remember_answer("s1", f"late-{i}", json.dumps({"color": "teal", "size": f"tiny{i}"}))
        return LocalAnswer(self.text, 5.0, 10, 5, confidence=0.9)


def test_a_call_scored_once_meets_the_decoys_of_its_upstream_answer_not_those_of_its_local_answer(store):
    """A paid upstream answers most shadowed calls once, so the local answer's score is the call's
    only one, and it is taken after the local model's seconds. Its decoys are those of the moment
    the upstream answer came back, the moment at which the teacher's self-agreement (the unpaired
    test's reference) meets them on the calls it is asked twice; the pool that moved meanwhile
    (here toward the answer, chance 0.5) would score the same pair 0.5 lower."""
    from understudy.inference.local_model import Variant

    router = router_recording_into(store)
    upstream, answer = json.dumps({"color": "teal", "size": "big"}), json.dumps({"color": "teal", "size": "small"})
    for i in range(5):
        router.remember_answer("s1", f"early-{i}", json.dumps({"color": f"red{i}", "size": f"tiny{i}"}))
    router.local = _AnswersAfterThePoolMoves(router, answer)
    plan = Plan("upstream", 1, Variant(None), also_other=True, phase="shadow")
    anyio.run(router.observe_pair, "s1", plan, "b", "b", SIZED_REQUEST, upstream, 5.0, None)

    local_score = store.cursor().execute("SELECT score FROM shadow_results WHERE call_id = 'b'").fetchone()[0]
    assert local_score == pytest.approx(0.5)
    # the control: the same pair scored on the pool as it stands after the local answer
    moved = router.score("s1", SIZED_REQUEST, "b", upstream, answer)
    assert moved.score == pytest.approx(0.0) and moved.components["chance"] == pytest.approx(0.5)
