"""`understudy eval` on the tiny model: a real proxy records a site, `train --now` makes v1 (peft,
GGUF adapter), then the held-out split of v1's snapshot is answered by the recorded upstream, the
bare base and v1 through llama.cpp, with a validator whose named checks are broken down per row.
The bare base is the negative control: it must not pass the validator the trained version passes."""

from __future__ import annotations

import json
import subprocess

import httpx

from tests.conftest import REPO_ROOT, VENV_BIN, run_cli, start_proxy
from tests.routing.test_decisions_e2e import RESPONSE_FORMAT, SYSTEM, tiny_env_for_colors
from tests.support.color_checks import PALETTE
from understudy.training.snapshots import _split_of

STORE_BACKENDS = ("duckdb", "postgresql")  # eval runs stored and read back on both stores

THINGS = {f"thing{k}": PALETTE[k % len(PALETTE)] for k in range(40)}


def _request(thing: str) -> dict:
    return {
        "model": "gpt-4o-mini",
        "temperature": 0.7,
        "response_format": RESPONSE_FORMAT,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Pick a color.\n\nthing = ({thing!r}, '')"},
        ],
    }


HELD_OUT = [t for t in THINGS if _split_of(_request(t)["messages"]) == "eval"]


def test_eval_compares_upstream_base_and_versions(fake_upstream, isolated_data_dir, tiny_model_env, tmp_path):
    assert 2 <= len(HELD_OUT) <= 12, HELD_OUT  # the split is a hash of the prompt: fixed for these prompts
    fake_upstream.reply = lambda body: json.dumps({"color": THINGS[body["messages"][-1]["content"].split("'")[1]]})
    env = {
        **tiny_env_for_colors(tiny_model_env),
        "PYTHONPATH": str(REPO_ROOT),
        "UNDERSTUDY_VALIDATORS": json.dumps({"Color": "tests.support.color_checks:check_color"}),
    }
    data = ["--data-dir", str(isolated_data_dir)]
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, env=env)
    try:
        site = None
        for thing in THINGS:
            response = httpx.post(proxy.url + "/v1/chat/completions", json=_request(thing), timeout=60)
            site = response.headers["x-understudy-site"]
        before = run_cli("eval", site, *data, env=env, check=False)
        assert (
            before.returncode == 1 and before.stderr.startswith("error: site ") and "understudy train" in before.stderr
        )
        # Training gets its own time limit: on a loaded 2-core machine it can take longer than run_cli's 120 s.
        trained = subprocess.run(
            [str(VENV_BIN / "understudy"), "train", site, "--now", "--max-steps", "80", *data],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert trained.returncode == 0, trained.stderr[-2000:]
        version = json.loads(trained.stdout)
        assert version["version"] == 1, version
        # Through the running proxy (admin API for the inputs and to store the run).
        via_proxy = json.loads(run_cli("eval", site, "--json", "--max-tokens", "48", *data, env=env).stdout)
    finally:
        proxy.stop()
    assert via_proxy["heldout"] == len(HELD_OUT)

    # Without a proxy: the store opened directly; the same figures (greedy decoding is deterministic).
    result = json.loads(
        run_cli("eval", site, "--versions", "v1", "--json", "--max-tokens", "48", *data, env=env).stdout
    )
    rows = {row["row"]: row for row in result["rows"]}
    assert list(rows) == ["upstream", "base", "v1"]
    up, base, v1 = rows["upstream"], rows["base"], rows["v1"]
    assert up["n"] == base["n"] == v1["n"] == len(HELD_OUT)
    assert up["parse_valid_rate"] == 1.0 and up["validator_pass_rate"] == 1.0
    assert up["checks"] == {"known_color": 1.0, "one_word": 1.0}
    assert up["cost_per_call_usd"] > 0 and up["latency_p50_ms"] > 0  # the recorded figures
    assert v1["cost_per_call_usd"] == 0.0 and v1["latency_p50_ms"] > 0
    # The trained version answers with colors it learned; the bare base does not (negative control).
    assert v1["checks"]["known_color"] >= 0.5 and base["checks"]["known_color"] == 0.0
    assert v1["validator_pass_rate"] > base["validator_pass_rate"]
    for row in (base, v1):
        assert row["agreement"] is None or 0.0 <= row["agreement"] <= 1.0
    assert {k: v1[k] for k in ("parse_valid_rate", "validator_pass_rate", "checks")} == {
        k: {r["row"]: r for r in via_proxy["rows"]}["v1"][k]
        for k in ("parse_valid_rate", "validator_pass_rate", "checks")
    }

    table = run_cli("eval", site, "--versions", "1", "--max-tokens", "48", *data, env={**env, "COLUMNS": "160"}).stdout
    assert "upstream" in table and "base" in table and "v1" in table and "known_color" in table
    missing = run_cli("eval", site, "--versions", "7", *data, env=env, check=False)
    assert missing.returncode == 1 and missing.stderr.strip().endswith("has no version v7")
    bad = run_cli("eval", site, "--versions", "x", *data, env=env, check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: --versions")

    page = tmp_path / "report.html"
    run_cli("report", "--html", str(page), *data, env=env)
    html = page.read_text()
    assert 'data-section="eval"' in html and 'data-row="v1"' in html and 'data-row="base"' in html
