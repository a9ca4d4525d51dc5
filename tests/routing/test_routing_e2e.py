"""The whole loop on the tiny model, against a running proxy: record -> train -> shadow, the
operator's promote / pin / unpin / rollback, the fallback on an invalid local answer, and local
answers a real byLLM program accepts.

Real parts throughout: `understudy serve` and `understudy train --now` as subprocesses, the
fake OpenAI upstream on 127.0.0.1, DuckDB, peft training of the tiny Llama, a GGUF adapter,
llama.cpp inference inside the proxy, the MiniLM scorer.
"""

from __future__ import annotations

import json
import os

import httpx

from tests.conftest import query_store, run_cli, start_proxy, wait_for
from tests.routing.test_decisions_e2e import COLORS, TRAIN_STEPS, ColorTeacher, ask, color_request, tiny_env_for_colors

STORE_BACKENDS = ("duckdb", "postgresql")  # the whole loop, CLI and reports on both stores


def site_row(proxy, site_id):
    return next(row for row in json.loads(proxy.cli("sites", "--json").stdout) if row["id"] == site_id)


def shadow_samples(proxy, site_id) -> int:
    """The comparable shadow samples the report counts for the site's reported version."""
    [data] = proxy.operation("report", site=site_id, format="json")
    return data["agreement"]["samples"] if data["agreement"] else 0


def test_record_train_shadow_promote_and_operate(fake_upstream, isolated_data_dir, tiny_model_env):
    """Record, train, shadow, then the operator's promote / pin / unpin / rollback, streaming and reports.
    (The policy's own decisions, with controls, are tests/routing/test_decisions_e2e.py.)"""
    fake_upstream.reply = ColorTeacher()
    env = tiny_env_for_colors(tiny_model_env)
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, env=env)
    try:
        site = ask(proxy, "sky").headers["x-understudy-site"]
        for thing in list(COLORS) * 2:
            ask(proxy, thing)

        trained = run_cli(
            "train", site, "--now", "--max-steps", TRAIN_STEPS, "--data-dir", str(isolated_data_dir), env=env
        )
        version = json.loads(trained.stdout)
        assert version["version"] == 1 and version["status"] == "active", trained.stdout
        assert version["metrics"]["verify"]["n"] >= 1 and os.path.exists(version["adapter"])
        assert version["metrics"]["heldout"]["parse_valid_rate"] == 1.0
        assert site_row(proxy, site)["state"] == "shadow"

        # Shadow: the upstream answers, the local model runs beside it and is scored.
        for thing in COLORS:
            assert ask(proxy, thing).headers["x-understudy-served-by"] == "upstream"
        # The local side runs behind the answers, in the background pool: on a busy host it can
        # trail them by seconds, so the samples are awaited before the operator steps in.
        wait_for(lambda: shadow_samples(proxy, site) >= len(COLORS), timeout=180, what="the shadow samples")

        # The operator promotes by hand; the local model answers, with the trained colors.
        run_cli("promote", site, "v1", "--data-dir", str(isolated_data_dir))
        response = ask(proxy, "rose")
        assert response.headers["x-understudy-served-by"] == f"local:{site}@v1"
        assert json.loads(response.json()["choices"][0]["message"]["content"]) == {"color": COLORS["rose"]}

        # Operator actions take effect at once in the running proxy.
        run_cli("pin", site, "upstream", "--data-dir", str(isolated_data_dir))
        assert ask(proxy, "snow").headers["x-understudy-served-by"] == "upstream"
        run_cli("unpin", site, "--data-dir", str(isolated_data_dir))
        assert ask(proxy, "snow").headers["x-understudy-served-by"] == f"local:{site}@v1"
        run_cli("rollback", site, "--data-dir", str(isolated_data_dir))
        assert site_row(proxy, site)["state"] == "learning"
        assert ask(proxy, "snow").headers["x-understudy-served-by"] == "upstream"
        refused = run_cli("promote", site, "v7", "--data-dir", str(isolated_data_dir), check=False)
        assert refused.returncode == 1 and "has no v7" in refused.stderr
        run_cli("promote", site, "v1", "--data-dir", str(isolated_data_dir))
        assert ask(proxy, "snow").headers["x-understudy-served-by"] == f"local:{site}@v1"
        assert (
            json.loads(run_cli("versions", site, "--json", "--data-dir", str(isolated_data_dir)).stdout)[0]["status"]
            == "active"
        )

        # Streaming from the local model is OpenAI-shaped SSE.
        with httpx.stream(
            "POST", proxy.url + "/v1/chat/completions", json={**color_request("sea"), "stream": True}, timeout=60
        ) as streamed:
            assert streamed.headers["x-understudy-served-by"] == f"local:{site}@v1"
            text = "".join(streamed.iter_text())
        assert text.rstrip().endswith("data: [DONE]") and '"chat.completion.chunk"' in text

        # Reports: terminal, JSON and the HTML page served at /report.
        terminal = run_cli("report", site, "--data-dir", str(isolated_data_dir)).stdout
        assert "local" in terminal and "v1" in terminal
        [data] = json.loads(run_cli("report", site, "--json", "--data-dir", str(isolated_data_dir)).stdout)
        assert data["agreement"]["samples"] >= len(COLORS) and data["local_calls"] >= 3
        page = httpx.get(proxy.url + "/report", headers={"authorization": f"Bearer {proxy.admin_token}"}).text
        assert 'data-plot="agreement"' in page
    finally:
        proxy.stop()

    shadows = query_store(isolated_data_dir, "SELECT score, local_valid FROM shadow_results WHERE site_id = ?", [site])
    audit = query_store(isolated_data_dir, "SELECT action FROM audit WHERE site_id = ? ORDER BY ts", [site])
    actions = [action for (action,) in audit]
    served = dict(
        query_store(isolated_data_dir, "SELECT served_by, count(*) FROM calls WHERE site_id = ? GROUP BY ALL", [site])
    )
    assert len(shadows) >= 6 and all(valid for _, valid in shadows)
    assert sum(score for score, _ in shadows) / len(shadows) > 0.9
    # `understudy train` audits the job it starts (understudy jobs lists it), then the version and its state
    assert actions[:3] == ["training", "version", "state"] and {"pin", "unpin", "rollback"} <= set(actions)
    assert served[f"local:{site}@v1"] >= 3


def test_invalid_local_answer_falls_back_to_upstream(fake_upstream, isolated_data_dir, tiny_model_env):
    """A local answer failing its schema is never returned: the upstream answers and it is counted."""
    fake_upstream.reply = lambda body: '{"color": "teal"}'
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, env=tiny_model_env)
    try:
        site = ask(proxy, "sky").headers["x-understudy-site"]
        ask(proxy, "sea")
        run_cli("train", site, "--now", "--data-dir", str(isolated_data_dir), env=tiny_model_env)
        run_cli("promote", site, "v1", "--data-dir", str(isolated_data_dir))
        # Grammar-constrained decoding keeps local answers valid JSON, so make one invalid the
        # way a real client can: one token (max_tokens) cannot hold a complete object.
        body = color_request("granite")
        body["max_tokens"] = 1
        response = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 200
        assert response.headers["x-understudy-served-by"] == "upstream"
        assert json.loads(response.json()["choices"][0]["message"]["content"]) == {"color": "teal"}
        metrics = httpx.get(proxy.url + "/metrics").text
        assert "understudy_local_fallbacks_total 1.0" in metrics
    finally:
        proxy.stop()
    errors = [
        error
        for (error,) in query_store(
            isolated_data_dir, "SELECT error FROM calls WHERE site_id = ? AND error IS NOT NULL", [site]
        )
    ]
    assert any(error.startswith("local fallback: local answer unusable: invalid JSON") for error in errors)


def test_byllm_accepts_local_answers(fake_upstream, isolated_data_dir, tiny_model_env, tmp_path):
    """A real Jac program runs with one of its typed sites served by the local model."""
    from tests.proxy.test_byllm_e2e import PROGRAM, run_jac

    proxy = start_proxy(isolated_data_dir, fake_upstream.url, env=tiny_model_env)
    jac_env = {"OPENAI_BASE_URL": proxy.url + "/v1", "OPENAI_API_KEY": "sk-e2e-key"}
    try:
        first = run_jac(PROGRAM, jac_env, tmp_path)
        assert first.returncode == 0, first.stderr[-2000:]
        level_site = next(r["id"] for r in json.loads(proxy.cli("sites", "--json").stdout) if r["returns"] == "Level")
        run_cli(
            "train", level_site, "--now", "--max-steps", "60", "--data-dir", str(isolated_data_dir), env=tiny_model_env
        )
        run_cli("promote", level_site, "v1", "--data-dir", str(isolated_data_dir))
        upstream_calls_before = len(fake_upstream.received)

        second = run_jac(PROGRAM, jac_env, tmp_path)
        assert second.returncode == 0, second.stderr[-2000:]
        assert second.stdout.count("LEVEL Level(name='text', difficulty=3)") == 2
        # The other three sites twice each, plus any drift-check samples of the local site.
        assert len(fake_upstream.received) - upstream_calls_before >= 6
    finally:
        proxy.stop()
    served = query_store(
        isolated_data_dir, "SELECT served_by, error FROM calls WHERE site_id = ? ORDER BY ts", [level_site]
    )
    assert [s for s, _ in served].count(f"local:{level_site}@v1") == 2, served


def test_per_site_policy_is_validated_and_applied(fake_upstream, isolated_data_dir):
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        site = ask(proxy, "sky").headers["x-understudy-site"]
        bad = run_cli(
            "policy", site, '{"promotion": {"min_sampels": 5}}', "--data-dir", str(isolated_data_dir), check=False
        )
        assert bad.returncode == 1 and "min_sampels" in bad.stderr
        run_cli(
            "policy",
            site,
            '{"promotion": {"min_samples": 5, "window": 5}, "scoring": {"number_tolerance": 0.2}}',
            "--data-dir",
            str(isolated_data_dir),
        )
        [data] = json.loads(run_cli("report", site, "--json", "--data-dir", str(isolated_data_dir)).stdout)
        assert data["policy"]["min_samples"] == 5
    finally:
        proxy.stop()


def test_upstream_down_the_local_version_answers(fake_upstream, isolated_data_dir, tiny_model_env):
    fake_upstream.reply = lambda body: '{"color": "teal"}'
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, env=tiny_model_env)
    try:
        site = ask(proxy, "sky").headers["x-understudy-site"]
        for thing in ["sea", "sun", "moon"]:
            ask(proxy, thing)
        run_cli("train", site, "--now", "--data-dir", str(isolated_data_dir), env=tiny_model_env)
        assert site_row(proxy, site)["state"] == "shadow"
        fake_upstream.__exit__(None, None, None)  # the upstream goes away
        response = ask(proxy, "rain")
        assert response.headers["x-understudy-served-by"] == f"local:{site}@v1"
        assert json.loads(response.json()["choices"][0]["message"]["content"]) == {"color": "teal"}
        [call] = json.loads(
            run_cli("calls", site, "--limit", "1", "--json", "--data-dir", str(isolated_data_dir)).stdout
        )
        assert call["error"].startswith("upstream down (upstream") and call["served_by"] == f"local:{site}@v1"
    finally:
        proxy.stop()
