"""The promotion policy's decisions end to end, at the default settings, with controls.

Real parts throughout: `understudy serve` and `understudy train` as subprocesses, a fake
OpenAI upstream on 127.0.0.1 whose answer depends on the request (a thing's color), DuckDB,
peft training of the tiny Llama, GGUF adapters, llama.cpp inside the proxy, the MiniLM scorer.

On one call site, in order:
- the bare base model (`--control base`) is rejected in shadow;
- a version trained on answers to other requests (`--control shuffled`) is rejected;
- a properly trained version is promoted and serves;
- when the upstream's answers change under it, the promoted version is demoted.

The upstream is declared free (`--upstream-free`: a local server costs nothing), so the
teacher's self-agreement is sampled on every upstream-answered call; every threshold, margin
and sample count is the shipped default.
"""

from __future__ import annotations

import itertools
import json
import re

import httpx
import pytest

from tests.conftest import query_store, run_cli, start_proxy
from understudy.training.snapshots import _split_of

STORE_BACKENDS = ("duckdb", "postgresql")  # the default policy's decisions on both stores

SCHEMA = {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "Color", "schema": SCHEMA}}
SYSTEM = "This is a task you must complete by returning only the output."
# Colors with distinct first letters: the tiny model tells answers apart by their first letter.
ALL_COLORS = {
    "sky": "blue",
    "grass": "green",
    "sun": "yellow",
    "rose": "red",
    "snow": "white",
    "sea": "navy",
    "leaf": "lime",
    "gold": "amber",
    "plum": "purple",
    "ice": "cyan",
    "fox": "orange",
    "duck": "teal",
}
TRAIN_STEPS = "300"  # what the tiny model needs to tell six prompts apart (~7 s on 2 cores)
# LoRA on the MLP too: attention alone in the 2-layer, 64-wide tiny model mixes some of them up.
TINY_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MAX_CALLS = 400  # per phase; a decision that takes longer is a failure


def color_request(thing: str) -> dict:
    return {
        "model": "gpt-4o-mini",
        "temperature": 0.7,
        "response_format": RESPONSE_FORMAT,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Pick a color.\n\nthing = ({thing!r}, '')"},
        ],
    }


# The tiny model memorises, it cannot generalise: every thing the test asks about must be in
# the training split (the split is a hash of the prompt), so the six are picked from a dozen.
COLORS = dict(
    itertools.islice(
        (
            (thing, color)
            for thing, color in ALL_COLORS.items()
            if _split_of(color_request(thing)["messages"]) == "train"
        ),
        6,
    )
)
DRIFTED = {thing: f"dark {color}" for thing, color in COLORS.items()}
assert len(COLORS) == 6


class ColorTeacher:
    """Answers a thing's color (a different table once it `drift`s): consistent, request-dependent."""

    def __init__(self):
        self.table = COLORS

    def __call__(self, body: dict) -> str:
        thing = re.search(r"thing = \('(\w+)'", body["messages"][-1]["content"]).group(1)
        return json.dumps({"color": self.table[thing]})


def tiny_env_for_colors(tiny_model_env: dict) -> dict:
    """The tiny model's environment with LoRA on the MLP too (see TINY_MODULES)."""
    train_config = {**json.loads(tiny_model_env["UNDERSTUDY_TRAIN_CONFIG"]), "target_modules": TINY_MODULES}
    return {**tiny_model_env, "UNDERSTUDY_TRAIN_CONFIG": json.dumps(train_config)}


def ask(proxy, thing: str) -> httpx.Response:
    response = httpx.post(proxy.url + "/v1/chat/completions", json=color_request(thing), timeout=60)
    assert response.status_code == 200, response.text
    return response


def site_state(proxy, site: str) -> str:
    return next(row for row in proxy.operation("sites") if row["id"] == site)["state"]


def until_decided(proxy, site: str, waiting_in: str, things=tuple(COLORS)) -> tuple[str, int]:
    """Send calls (cycling through `things`) until the site leaves `waiting_in`; (new state, calls)."""
    for n, thing in enumerate(itertools.cycle(things), start=1):
        ask(proxy, thing)
        if n % 5 == 0 and (state := site_state(proxy, site)) != waiting_in:
            return state, n
        if n >= MAX_CALLS:
            break
    raise AssertionError(
        f"site still {waiting_in} after {MAX_CALLS} calls; report: {proxy.cli('report', site).stdout[-2500:]}"
    )


def last_reason(proxy, site: str) -> str:
    """The reason of the site's newest state change, from the report (the proxy owns the store)."""
    [report] = json.loads(proxy.cli("report", site, "--json").stdout)
    return next(entry["reason"] for entry in report["audit"] if entry["action"] == "state")


@pytest.mark.timeout(900)
def test_default_policy_rejects_controls_promotes_a_trained_version_and_demotes_it_when_it_goes_bad(
    fake_upstream, isolated_data_dir, tiny_model_env
):
    teacher = ColorTeacher()
    fake_upstream.reply = teacher
    assert "UNDERSTUDY_ROUTING_POLICY" not in tiny_model_env  # the shipped defaults
    env = tiny_env_for_colors(tiny_model_env)
    data_dir = str(isolated_data_dir)
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, "--upstream-free", env=env)
    try:
        site = ask(proxy, "sky").headers["x-understudy-site"]
        for thing in itertools.islice(itertools.cycle(COLORS), 17):
            ask(proxy, thing)

        # 1. The bare base model: valid JSON under the grammar, but not the right colors.
        base = json.loads(run_cli("train", site, "--control", "base", "--data-dir", data_dir, env=env).stdout)
        assert base["status"] == "active" and base["adapter"] is None
        assert site_state(proxy, site) == "shadow"
        state, calls = until_decided(proxy, site, "shadow")
        assert state == "learning", last_reason(proxy, site)
        # Agreement rejects it; its run-on strings are also cut at the site's token cap (1.5x the
        # teacher's answers, inference.checked_sampling), so validity may be found inferior as well.
        assert re.match(r"rejected: agreement( and validity)? inferior to the teacher", last_reason(proxy, site))

        # 2. Trained on answers to other requests: valid colors, for the wrong things.
        shuffled = json.loads(
            run_cli(
                "train",
                site,
                "--now",
                "--control",
                "shuffled",
                "--max-steps",
                TRAIN_STEPS,
                "--data-dir",
                data_dir,
                env=env,
            ).stdout
        )
        assert shuffled["status"] == "active" and shuffled["version"] == 2
        state, _ = until_decided(proxy, site, "shadow")
        assert state == "learning"
        assert last_reason(proxy, site).startswith("rejected: agreement inferior to the teacher")

        # 3. Properly trained: promoted at the default policy, then serves.
        trained = json.loads(
            run_cli("train", site, "--now", "--max-steps", TRAIN_STEPS, "--data-dir", data_dir, env=env).stdout
        )
        assert trained["status"] == "active" and trained["version"] == 3
        state, promoted_after = until_decided(proxy, site, "shadow")
        assert state == "local", last_reason(proxy, site)
        assert last_reason(proxy, site).startswith("promoted: non-inferior to the teacher")
        served = ask(proxy, "rose")
        assert served.headers["x-understudy-served-by"] == f"local:{site}@v3"
        assert json.loads(served.json()["choices"][0]["message"]["content"]) == {"color": "red"}

        # 4. The world changes: the upstream answers differently, the drift checks see it.
        teacher.table = DRIFTED
        state, _ = until_decided(proxy, site, "local")
        assert state == "shadow"
        assert last_reason(proxy, site).startswith("demoted: agreement inferior to the teacher")
        report = json.loads(run_cli("report", site, "--json", "--data-dir", data_dir).stdout)[0]
    finally:
        proxy.stop()

    assert 20 <= promoted_after <= MAX_CALLS
    assert report["extra_calls"]["self_check"] > 20 and report["extra_calls"]["drift"] >= 1
    by_version = dict(
        query_store(
            isolated_data_dir,
            "SELECT version, avg(score) FROM shadow_results WHERE site_id = ? AND phase = 'shadow' GROUP BY version",
            [site],
        )
    )
    assert by_version[1] < 0.2 and by_version[2] < 0.5 and by_version[3] > 0.9
    # Drift checks and second answers are calls: recorded with tokens and (zero) cost.
    extra = query_store(
        isolated_data_dir,
        "SELECT purpose, count(*), sum(prompt_tokens), sum(cost_usd) FROM calls "
        "WHERE site_id = ? AND purpose <> 'client' GROUP BY ALL",
        [site],
    )
    assert {purpose for purpose, *_ in extra} == {"drift", "self_check"}
    assert all(tokens > 0 and cost == 0.0 for _, _, tokens, cost in extra)
