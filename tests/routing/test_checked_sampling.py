"""Checked sampling: a local answer that fails its checks is drawn again, then the upstream answers.

End to end through a running proxy at the default sampling settings: a version promoted on the
tiny model answers locally. With a validator that refuses every answer the site falls back to
the upstream after `tries` draws, and the call row, the error and /metrics say how many; the
control, a validator that accepts, is served locally on the first (greedy) draw. In-process on
the tiny model: a check that refuses the greedy answer gets a different, sampled one that passes.
"""

from __future__ import annotations

import json
import math

import httpx
import pytest

from tests.conftest import REPO_ROOT, query_store, run_cli, start_proxy
from tests.routing.test_decisions_e2e import ask
from understudy.inference.checked_sampling import AnswerChecks, SamplingPolicy, draw_until_valid, token_cap
from understudy.inference.constraints import compile_schema
from understudy.inference.local_generate import LocalGenerator
from understudy.inference.local_model import LocalAnswer

DEFAULT_TRIES = SamplingPolicy().tries


def refuse_everything(answer: str, arguments) -> tuple[bool, dict]:
    return False, {"checks": [{"name": "never", "passed": False}]}


def accept_everything(answer: str, arguments) -> tuple[bool, dict]:
    return True, {}


@pytest.fixture
def user_env(tiny_model_env):
    """The tiny model's environment with this repository's tests importable (the validators above)."""
    return {**tiny_model_env, "PYTHONPATH": str(REPO_ROOT)}


def _local_tries_metric(metrics: str, outcome: str) -> float:
    line = next(
        line for line in metrics.splitlines() if line.startswith(f'understudy_local_tries_count{{outcome="{outcome}"}}')
    )
    return float(line.split()[-1])


@pytest.mark.parametrize("validator, served_locally", [("refuse_everything", False), ("accept_everything", True)])
def test_a_failing_local_answer_is_drawn_k_times_then_answered_upstream(
    fake_upstream, isolated_data_dir, user_env, validator, served_locally
):
    fake_upstream.reply = lambda body: '{"color": "teal"}'
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, env=user_env)
    try:
        site = ask(proxy, "sky").headers["x-understudy-site"]
        ask(proxy, "sea")
        run_cli("train", site, "--now", "--data-dir", str(isolated_data_dir), env=user_env)
        run_cli("promote", site, "v1", "--data-dir", str(isolated_data_dir))
        proxy.cli("policy", site, json.dumps({"validator": f"tests.routing.test_checked_sampling:{validator}"}))
        response = ask(proxy, "granite")
        metrics = httpx.get(proxy.url + "/metrics").text
    finally:
        proxy.stop()
    [(served_by, tries, error)] = query_store(
        isolated_data_dir,
        "SELECT served_by, local_tries, error FROM calls WHERE site_id = ? AND purpose = 'client' "
        "ORDER BY ts DESC LIMIT 1",
        [site],
    )
    assert response.headers["x-understudy-served-by"] == served_by
    [report] = json.loads(run_cli("report", site, "--json", "--data-dir", str(isolated_data_dir)).stdout)
    if served_locally:
        assert served_by == f"local:{site}@v1" and tries == 1 and error is None
        assert _local_tries_metric(metrics, "served") == 1
        assert report["draws"]["served"] == 1 and report["draws"]["served_mean_tries"] == 1.0
    else:
        assert report["draws"]["fallbacks"] == 1 and report["draws"]["fallback_mean_tries"] == DEFAULT_TRIES
        assert served_by == "upstream" and tries == DEFAULT_TRIES
        assert error == f"local fallback: local answer fails its validator (never) after {DEFAULT_TRIES} tries"
        assert _local_tries_metric(metrics, "fallback") == 1
        assert f'understudy_local_tries_bucket{{le="{float(DEFAULT_TRIES)}",outcome="fallback"}} 1.0' in metrics
        assert f'understudy_local_tries_bucket{{le="{float(DEFAULT_TRIES - 1)}",outcome="fallback"}} 0.0' in metrics


SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue", "amber", "teal", "plum"]}},
    "required": ["color"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def generator(tiny_llama):
    with LocalGenerator(tiny_llama[1], n_ctx=512, n_threads=2) as gen:
        yield gen


def _draws(generator, checks: AnswerChecks):
    constraint = compile_schema(SCHEMA, lean=True)
    made = []

    def draw(temperature: float, seed: int | None) -> LocalAnswer:
        out = generator.complete(
            "Pick a color.\n", max_tokens=16, constraint=constraint, temperature=temperature, seed=seed
        )
        made.append((temperature, seed, out.text))
        return LocalAnswer(out.text, 0.0, out.prompt_tokens, out.completion_tokens, out.confidence)

    return draw, made


def test_a_refused_greedy_answer_is_replaced_by_a_sampled_one(generator):
    greedy = generator.complete("Pick a color.\n", max_tokens=16, constraint=compile_schema(SCHEMA, lean=True)).text
    checks = AnswerChecks(SCHEMA, lambda text: (text != greedy, "the greedy answer"), SamplingPolicy(tries=8))
    draw, made = _draws(generator, checks)
    answer = draw_until_valid(draw, checks)
    assert answer.passed and answer.text != greedy and 2 <= answer.tries <= 8
    assert made[0] == (0.0, None, greedy)  # the first draw is greedy, the later ones sampled with new seeds
    assert [seed for _, seed, _ in made[1:]] == list(range(1, answer.tries))
    # the control: a check nothing passes spends every try and is returned refused
    never = AnswerChecks(SCHEMA, lambda text: (False, "never"), SamplingPolicy(tries=3))
    draw, made = _draws(generator, never)
    refused = draw_until_valid(draw, never)
    assert not refused.passed and refused.tries == 3 and refused.why == "never" and len(made) == 3


def test_no_new_draw_starts_past_the_budget(generator):
    checks = AnswerChecks(SCHEMA, lambda text: (False, "never"), SamplingPolicy(tries=8, budget_s=1e-6))
    draw, made = _draws(generator, checks)
    assert draw_until_valid(draw, checks).tries == 1 and len(made) == 1


def test_the_token_cap_comes_from_the_sites_recorded_answers():
    answers = tuple('{"color": "%s"}' % ("x" * n) for n in (10, 40, 20, 30))
    checks = AnswerChecks(SCHEMA, sampling=SamplingPolicy(cap_factor=1.5), reference_answers=answers)
    assert token_cap(checks, len) == math.ceil(1.5 * len(answers[1])) + 16
    assert token_cap(AnswerChecks(SCHEMA, reference_answers=answers[:3]), len) is None  # too few to measure
    assert (
        token_cap(AnswerChecks(SCHEMA, sampling=SamplingPolicy(cap_factor=0), reference_answers=answers), len) is None
    )


def test_sampling_settings_are_validated():
    with pytest.raises(ValueError, match="unknown sampling setting"):
        SamplingPolicy.from_dict({"trys": 3})
    with pytest.raises(ValueError, match="tries must be >= 1"):
        SamplingPolicy.from_dict(None, {"tries": 0})
    assert SamplingPolicy.from_dict({"tries": 2}, {"temperature": 1.0}) == SamplingPolicy(tries=2, temperature=1.0)
