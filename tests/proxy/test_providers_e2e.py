"""Several upstream providers behind one running proxy: routing by name, pattern and alias,
a missing key refused without contacting anyone, and the provider recorded with each call."""

from __future__ import annotations

import json

import httpx

from tests.conftest import run_cli, start_proxy
from tests.proxy.test_proxy_server import stored_calls
from tests.support.fake_upstream import FakeUpstream

CONFIG = """
[[routes]]
name = "claude-stand-in"
pattern = "claude-*"
provider = "anthropic"
base_url = "{claude}"
key_env = "TEST_CLAUDE_KEY"
price_input = 1.0
price_output = 2.0

[[routes]]
name = "gemini-stand-in"
pattern = "gemini-*"
provider = "gemini"
base_url = "{gemini}"
key_env = "TEST_GEMINI_KEY"

[aliases]
level-designer = "claude-3-5-haiku-latest"
"""


def ask(proxy, model: str, **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Describe.\n\nlevel = ('Crypt', '')"}], **extra}
    return httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=30)


def test_routes_by_pattern_alias_and_default(isolated_data_dir, tmp_path, monkeypatch):
    with FakeUpstream() as openai, FakeUpstream() as claude, FakeUpstream() as gemini:
        config = tmp_path / "upstreams.toml"
        config.write_text(CONFIG.format(claude=claude.url, gemini=gemini.url))
        monkeypatch.setenv("TEST_CLAUDE_KEY", "sk-claude-secret")
        monkeypatch.delenv("TEST_GEMINI_KEY", raising=False)
        proxy = start_proxy(isolated_data_dir, openai.url, "--config", str(config))
        try:
            assert ask(proxy, "gpt-4o-mini").status_code == 200
            assert ask(proxy, "claude-3-5-sonnet-latest", temperature=1.7).status_code == 200
            aliased = ask(proxy, "level-designer", metadata={"jac_caller_name": "describe"})
            assert aliased.status_code == 200

            missing = ask(proxy, "gemini-2.0-flash")
            assert missing.status_code == 401
            error = missing.json()["error"]
            assert error["code"] == "upstream_key_missing"
            assert "gemini" in error["message"] and "gemini-2.0-flash" in error["message"]
            assert "TEST_GEMINI_KEY" in error["message"]

            assert [r["body"]["model"] for r in openai.received] == ["gpt-4o-mini"]
            assert [r["body"]["model"] for r in claude.received] == [
                "claude-3-5-sonnet-latest",
                "claude-3-5-haiku-latest",
            ]
            assert gemini.received == []  # never contacted, never sent elsewhere
            assert claude.received[0]["headers"]["authorization"] == "Bearer sk-claude-secret"
            assert claude.received[0]["body"]["temperature"] == 1.0  # Anthropic caps temperature at 1

            listing = json.loads(
                run_cli("upstreams", "--json", "--config", str(config), "--upstream-url", openai.url).stdout
            )
            names = [route["name"] for route in listing["routes"]]
            assert names[:2] == ["claude-stand-in", "gemini-stand-in"] and names[-1] == "default"
            assert "sk-claude-secret" not in json.dumps(listing)
            checked = run_cli(
                "upstreams", "--check", "--json", "--config", str(config), "--upstream-url", openai.url, check=False
            )
            results = {r["route"]: r for r in json.loads(checked.stdout)["checks"]}
            assert results["claude-stand-in"]["ok"] and not results["gemini-stand-in"]["contacted"]
        finally:
            proxy.stop()

    calls = {call["model"]: call for call in stored_calls(isolated_data_dir)}
    assert calls["gpt-4o-mini"]["provider"] == "openai-compatible"
    assert calls["claude-3-5-sonnet-latest"]["provider"] == "anthropic"
    assert calls["level-designer"]["upstream_model"] == "claude-3-5-haiku-latest"
    assert calls["level-designer"]["cost_usd"] == (11 * 1.0 + 7 * 2.0) / 1e6  # the route's own price
    assert calls["gemini-2.0-flash"]["status"] == 401
    assert "sk-claude-secret" not in json.dumps(list(calls.values()), default=str)
