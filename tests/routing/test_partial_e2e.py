"""Partial promotion through the running proxy, at the shipped defaults: a version that knows half
of a site's requests (and is sure of them) is partly promoted by the policy; it then serves the
requests it is sure of and sends the others upstream, scoring them as shadow samples.

The control is the other half of the same traffic: the requests it was never trained on must
keep going upstream, and the bare-base control shadowing this kind of site is rejected
(tests/routing/test_decisions_e2e.py).
"""

from __future__ import annotations

import itertools
import json
import re

import httpx
import pytest

from tests.conftest import query_store, run_cli, start_proxy
from tests.routing.test_decisions_e2e import (
    ALL_COLORS,
    COLORS,
    TRAIN_STEPS,
    ask,
    last_reason,
    tiny_env_for_colors,
    until_decided,
)

UNTRAINED = {thing: color for thing, color in ALL_COLORS.items() if thing not in COLORS}


class AllColorsTeacher:
    def __call__(self, body: dict) -> str:
        thing = re.search(r"thing = \('(\w+)'", body["messages"][-1]["content"]).group(1)
        return json.dumps({"color": ALL_COLORS[thing]})


@pytest.mark.timeout(900)
def test_a_version_sure_of_half_the_site_is_partly_promoted_and_serves_that_half(
    fake_upstream, isolated_data_dir, tiny_model_env
):
    fake_upstream.reply = AllColorsTeacher()
    assert "UNDERSTUDY_ROUTING_POLICY" not in tiny_model_env  # the shipped defaults
    env = tiny_env_for_colors(tiny_model_env)
    data_dir = str(isolated_data_dir)
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, "--upstream-free", env=env)
    try:
        site = ask(proxy, "sky").headers["x-understudy-site"]
        for thing in itertools.islice(itertools.cycle(COLORS), 17):  # recorded: only the trained half
            ask(proxy, thing)
        trained = json.loads(
            run_cli("train", site, "--now", "--max-steps", TRAIN_STEPS, "--data-dir", data_dir, env=env).stdout
        )
        assert trained["status"] == "active"
        # Shadow on the whole site: the half it knows and the half it never saw.
        state, _ = until_decided(proxy, site, "shadow", things=list(COLORS) + list(UNTRAINED))
        assert state == "partial", proxy.cli("report", site).stdout[-3000:]
        assert last_reason(proxy, site).startswith("partly promoted: answers at confidence >= ")
        [row] = [r for r in json.loads(proxy.cli("sites", "--json").stdout) if r["id"] == site]
        assert 0 < row["partial_threshold"] < 1

        answers = {thing: ask(proxy, thing) for thing in ALL_COLORS}
        served = {thing: answer.headers["x-understudy-served-by"] for thing, answer in answers.items()}
        local = {thing for thing, by in served.items() if by == f"local:{site}@v{trained['version']}"}
        # It serves what it knows, and only that: the threshold is the one with the most room under
        # the teacher's bar, so a trained request the tiny model is less sure of than some it never
        # saw (and answers wrongly) may go upstream too (measured: 4 of the 6 trained served).
        assert len(local) >= len(COLORS) // 2 and local <= set(COLORS), served
        for thing in local:  # and what it serves is right
            assert json.loads(answers[thing].json()["choices"][0]["message"]["content"]) == {"color": COLORS[thing]}
        assert all(served[thing] == "upstream" for thing in UNTRAINED), served  # the control half
        metrics = httpx.get(proxy.url + "/metrics", timeout=30).text
        assert f'understudy_site_state{{site="{site}",state="partial"}} 1.0' in metrics
        assert f'understudy_site_partial_threshold{{site="{site}"}}' in metrics
        report = json.loads(proxy.cli("report", site, "--json").stdout)[0]
        assert report["partial"]["serving"] and report["partial"]["threshold"] == row["partial_threshold"]
    finally:
        proxy.stop()
    # The refused half was scored against the upstream as shadow samples of the rest of the site.
    [(rest,)] = query_store(
        isolated_data_dir,
        "SELECT count(*) FROM shadow_results s JOIN sites t ON t.id = s.site_id "
        "WHERE s.site_id = ? AND s.ts >= t.state_since AND s.phase = 'shadow'",
        [site],
    )
    assert rest >= len(UNTRAINED)
