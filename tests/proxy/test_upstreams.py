"""The upstream route table, per-provider adjustments and the `--check` probe.

Real files under tmp_path, real env vars (monkeypatch), real fake upstream servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import copy
import textwrap

import httpx
import pytest

from tests.support.fake_upstream import FakeUpstream, free_port
from understudy.proxy.providers import UnsupportedRequest, adjust_request, adjust_response
from understudy.proxy.upstream_check import check_model_for, check_routes
from understudy.proxy.upstreams import (
    ANTHROPIC_URL,
    GEMINI_URL,
    OPENAI_URL,
    MissingKey,
    UpstreamConfigError,
    UpstreamTable,
)

KEY_VARS = ("ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY", "LOCAL_KEY", "TEAM_KEY")


@pytest.fixture(autouse=True)
def no_keys(monkeypatch):
    for name in KEY_VARS:
        monkeypatch.delenv(name, raising=False)


def write(tmp_path, text: str):
    path = tmp_path / "upstreams.toml"
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """
[[routes]]
name = "local"
pattern = "qwen*"
provider = "openai-compatible"
base_url = "http://127.0.0.1:9/v1/"
headers = { "x-team" = "games" }
timeout_s = 120
price_input = 0.1
price_output = 0.2
check_model = "qwen2.5"

[[routes]]
name = "team-claude"
pattern = "claude-3-5-haiku*"
provider = "anthropic"
key_env = "TEAM_KEY"

[[routes]]
name = "exact"
pattern = "fast"
provider = "openai"
model = "gpt-4o-mini"

[aliases]
level-designer = "claude-3-5-haiku-latest"
narrator = { model = "gpt-4o-mini", route = "local" }
sonnet = "claude-sonnet-4-0"
"""


# --- configuration ---------------------------------------------------------------------------


def test_good_file_parses_routes_then_built_ins(tmp_path):
    table = UpstreamTable.load(write(tmp_path, GOOD), OPENAI_URL, None)
    assert [r.name for r in table.routes] == ["local", "team-claude", "exact", "anthropic", "gemini", "default"]
    local = table.route_named("local")
    assert local.base_url == "http://127.0.0.1:9/v1"  # trailing slash dropped
    assert local.extra_headers == {"x-team": "games"}
    assert (local.timeout_s, local.price, local.keyless_ok, local.key_env) == (120.0, (0.1, 0.2), True, None)
    assert local.source == "config"
    team = table.route_named("team-claude")
    assert (team.base_url, team.key_env, team.keyless_ok) == (ANTHROPIC_URL, "TEAM_KEY", False)
    exact = table.route_named("exact")
    assert (exact.base_url, exact.key_env) == (OPENAI_URL, "OPENAI_API_KEY")
    assert table.route_named("gemini").key_envs == ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    assert table.route_named("default").provider == "openai"


def test_no_file_means_built_in_defaults(tmp_path):
    table = UpstreamTable.load(tmp_path / "absent.toml", "http://127.0.0.1:1234/v1/", None)
    assert [(r.name, r.pattern) for r in table.routes] == [
        ("anthropic", "claude-*"),
        ("gemini", "gemini-*"),
        ("default", "*"),
    ]
    default = table.route_named("default")
    assert default.base_url == "http://127.0.0.1:1234/v1" and default.provider == "openai-compatible"
    assert UpstreamTable.load(None, OPENAI_URL).routes[-1].provider == "openai"


def test_explicit_config_must_exist(tmp_path):
    with pytest.raises(UpstreamConfigError, match="absent.toml: upstreams configuration file not found"):
        UpstreamTable.from_config(tmp_path / "absent.toml", tmp_path, OPENAI_URL)
    (tmp_path / "upstreams.toml").write_text(GOOD)
    table = UpstreamTable.from_config(None, tmp_path, OPENAI_URL)
    assert table.route_named("local") is not None


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[routes]\n", r"not valid TOML"),
        ("[routing]\nx = 1\n", r"unknown top-level key\(s\) routing"),
        ("routes = 3\n", r"'routes' must be an array of tables"),
        ("[[routes]]\nprovider = 'openai'\n", r"route #1: 'pattern' is required"),
        ("[[routes]]\npattern = 'x*'\nprovider = 'azure'\n", r"route #1: 'provider' must be one of .* \(got 'azure'\)"),
        (
            "[[routes]]\npattern = 'x*'\nprovider = 'openai-compatible'\n",
            r"'base_url' is required for provider openai-compatible",
        ),
        (
            "[[routes]]\npattern = 'x*'\nprovider = 'openai'\nbase_url = 'ftp://x'\n",
            r"'base_url' must be an http\(s\) URL",
        ),
        (
            "[[routes]]\nname = 'mine'\npattern = 'x*'\nprovider = 'openai'\nkey = 'sk-abc'\n",
            r"route #1 \('mine'\): 'key' is not allowed: keys are never read from the file",
        ),
        (
            "[[routes]]\npattern = 'x*'\nprovider = 'openai'\nkey_env = 'sk-proj-abc123'\n",
            r"'key_env' must name an environment variable",
        ),
        (
            "[[routes]]\npattern = 'x*'\nprovider = 'openai'\nheaders = { Authorization = 'Bearer x' }\n",
            r"header 'Authorization' would put a credential in the file",
        ),
        ("[[routes]]\npattern = 'x*'\nprovider = 'openai'\ntimeout_s = 0\n", r"'timeout_s' must be a positive number"),
        (
            "[[routes]]\npattern = 'x*'\nprovider = 'openai'\nprice_input = -1\n",
            r"'price_input' must be a non-negative number",
        ),
        ("[[routes]]\npattern = 'x*'\nprovider = 'openai'\nprise_input = 1\n", r"unknown field\(s\) prise_input"),
        (
            "[[routes]]\nname = 'anthropic'\npattern = 'x*'\nprovider = 'anthropic'\n",
            r"'anthropic' is reserved for a built-in route",
        ),
        (
            "[[routes]]\nname = 'a'\npattern = 'x*'\nprovider = 'openai'\n[[routes]]\nname = 'a'\npattern = 'y*'\nprovider = 'openai'\n",
            r"route #2: duplicate route name 'a'",
        ),
        ("[aliases]\nfoo = 3\n", r"alias 'foo': must be a model name or a table"),
        ("[aliases]\nfoo = 'gpt-*'\n", r"alias 'foo': the target 'gpt-\*' must be a concrete model"),
        (
            "[aliases]\nfoo = { model = 'gpt-4o', route = 'nowhere' }\n",
            r"alias 'foo' names route 'nowhere', which does not exist",
        ),
        ("[aliases]\nfoo = { modle = 'gpt-4o' }\n", r"alias 'foo': unknown field\(s\) modle"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UpstreamConfigError, match=message) as caught:
        UpstreamTable.load(path, OPENAI_URL)
    text_of_error = str(caught.value)
    assert text_of_error.startswith(str(path)) and "\n" not in text_of_error
    assert "sk-abc" not in text_of_error and "sk-proj-abc123" not in text_of_error  # keys are never echoed


# --- resolution ------------------------------------------------------------------------------


def test_resolution_by_exact_name_glob_and_order(tmp_path):
    table = UpstreamTable.load(write(tmp_path, GOOD), OPENAI_URL)
    fast = table.resolve("fast")
    assert (fast.route.name, fast.upstream_model, fast.requested_model, fast.alias) == (
        "exact",
        "gpt-4o-mini",
        "fast",
        None,
    )
    assert fast.rewrites_model
    assert table.resolve("qwen2.5-7b").route.name == "local"
    # Config before built-ins: claude-3-5-haiku* goes to the team route, other claude-* to the built-in.
    assert table.resolve("claude-3-5-haiku-latest").route.name == "team-claude"
    assert table.resolve("claude-sonnet-4-0").route.name == "anthropic"
    assert table.resolve("gemini-2.5-flash").route.name == "gemini"
    for model in ("gpt-4o-mini", "o3-mini", "llama3", "fastest"):
        resolution = table.resolve(model)
        assert resolution.route.name == "default" and not resolution.rewrites_model
    assert table.resolve("gpt-4o-mini") is table.resolve("gpt-4o-mini")  # cached


def test_resolution_by_alias_keeps_both_names(tmp_path):
    table = UpstreamTable.load(write(tmp_path, GOOD), OPENAI_URL)
    designer = table.resolve("level-designer")
    assert (designer.requested_model, designer.upstream_model, designer.alias) == (
        "level-designer",
        "claude-3-5-haiku-latest",
        "level-designer",
    )
    assert designer.route.name == "team-claude" and designer.provider == "anthropic"
    narrator = table.resolve("narrator")  # the alias pins its route, overriding pattern order
    assert (narrator.route.name, narrator.upstream_model) == ("local", "gpt-4o-mini")
    assert {row["alias"]: row["route"] for row in table.describe_aliases()} == {
        "level-designer": "team-claude",
        "narrator": "local",
        "sonnet": "anthropic",
    }


def test_missing_key_names_provider_model_and_variable(tmp_path):
    table = UpstreamTable.load(write(tmp_path, GOOD), OPENAI_URL)
    with pytest.raises(MissingKey) as caught:
        table.resolve("claude-sonnet-4-0").key()
    assert (caught.value.provider, caught.value.model, caught.value.env_name) == (
        "anthropic",
        "claude-sonnet-4-0",
        "ANTHROPIC_API_KEY",
    )
    assert "anthropic" in str(caught.value) and "ANTHROPIC_API_KEY" in str(caught.value)
    with pytest.raises(MissingKey, match="GEMINI_API_KEY or GOOGLE_API_KEY"):
        table.resolve("gemini-2.0-flash").headers()
    with pytest.raises(MissingKey) as caught:  # the alias' concrete model is named
        table.resolve("level-designer").key()
    assert (caught.value.env_name, caught.value.model) == ("TEAM_KEY", "claude-3-5-haiku-latest")
    with pytest.raises(MissingKey, match="OPENAI_API_KEY"):  # a config openai route is not keyless
        table.resolve("fast").key()


def test_keys_are_read_at_call_time(tmp_path, monkeypatch):
    table = UpstreamTable.load(write(tmp_path, GOOD), OPENAI_URL)
    resolution = table.resolve("gemini-2.0-flash")
    monkeypatch.setenv("GOOGLE_API_KEY", "g-fallback")
    assert resolution.key() == "g-fallback"
    monkeypatch.setenv("GEMINI_API_KEY", "g-primary")
    assert resolution.headers() == {"authorization": "Bearer g-primary"}
    monkeypatch.setenv("ANTHROPIC_API_KEY", "a-key")
    assert table.resolve("claude-sonnet-4-0").key() == "a-key"


def test_keyless_default_route_forwards_client_authorization(tmp_path, monkeypatch):
    table = UpstreamTable.load(None, "http://127.0.0.1:1/v1")
    default = table.resolve("gpt-4o-mini")
    assert default.route.keyless_ok and default.key() is None and default.headers() == {}
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert default.key() == "sk-env"
    explicit = UpstreamTable.load(None, OPENAI_URL, "sk-configured").resolve("gpt-4o-mini")
    assert explicit.key() == "sk-configured"  # the configured upstream key wins over OPENAI_API_KEY
    local = UpstreamTable.load(write(tmp_path, GOOD), OPENAI_URL).resolve("qwen2")
    assert local.key() is None and local.headers() == {"x-team": "games"}


def test_describe_never_prints_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("TEAM_KEY", "secret-team-key")
    monkeypatch.setenv("GOOGLE_API_KEY", "secret-google-key")
    table = UpstreamTable.load(write(tmp_path, GOOD), OPENAI_URL, "secret-configured-key")
    rows = {row["name"]: row for row in table.describe()}
    assert "secret" not in repr(rows) and "secret" not in repr(table.routes)
    assert rows["team-claude"]["key_set"] is True and rows["team-claude"]["key_env"] == "TEAM_KEY"
    assert rows["anthropic"]["key_set"] is False and rows["anthropic"]["auth"] == "MISSING: set ANTHROPIC_API_KEY"
    assert rows["gemini"]["auth"] == "key from GOOGLE_API_KEY"
    assert rows["default"]["auth"] == "configured upstream key"
    assert rows["local"]["auth"] == "client's Authorization forwarded"
    assert (rows["local"]["timeout_s"], rows["local"]["price_input"], rows["local"]["price_output"]) == (
        120.0,
        0.1,
        0.2,
    )
    assert set(rows["local"]) >= {
        "name",
        "pattern",
        "provider",
        "base_url",
        "key_env",
        "key_set",
        "timeout_s",
        "source",
    }


def test_prepare_body_only_when_needed(tmp_path):
    table = UpstreamTable.load(write(tmp_path, GOOD), OPENAI_URL)
    plain = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    assert table.resolve("gpt-4o-mini").prepare_body(plain) is None
    aliased = table.resolve("narrator").prepare_body({**plain, "model": "narrator"})
    assert aliased["model"] == "gpt-4o-mini"
    claude = table.resolve("claude-sonnet-4-0").prepare_body(
        {**plain, "model": "claude-sonnet-4-0", "temperature": 1.5}
    )
    assert claude == {**plain, "model": "claude-sonnet-4-0", "temperature": 1.0}
    assert table.resolve("claude-sonnet-4-0").prepare_body({**plain, "model": "claude-sonnet-4-0"}) is None


# --- provider adjustments --------------------------------------------------------------------

BYLLM_TYPED = {
    "model": "claude-3-5-haiku-latest",
    "messages": [
        {"role": "system", "content": "Return only the output.\n"},
        {"role": "user", "content": [{"type": "text", "text": "Create the next level."}]},
    ],
    "tools": None,
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "Level",
            "strict": True,
            "schema": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
                "additionalProperties": False,
            },
        },
    },
    "temperature": 0.7,
    "max_tokens": None,
    "metadata": {"jac_caller_name": "create_next_level"},
}


def test_adjustments_are_pure_and_identity_when_nothing_changes():
    original = copy.deepcopy(BYLLM_TYPED)
    for provider in ("anthropic", "gemini"):
        adjust_request(provider, BYLLM_TYPED)
    assert BYLLM_TYPED == original
    simple = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5}
    for provider in ("openai", "openai-compatible", "anthropic", "gemini"):
        assert adjust_request(provider, simple) is simple
    assert adjust_request("openai", BYLLM_TYPED) is BYLLM_TYPED


def test_anthropic_moves_json_schema_into_system_instruction():
    out = adjust_request("anthropic", BYLLM_TYPED)
    assert "response_format" not in out and "tools" not in out and "max_tokens" not in out
    assert out["metadata"] == BYLLM_TYPED["metadata"]  # Anthropic ignores metadata: left alone
    system = out["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("Return only the output.")
    assert '"Level"' in system["content"] and '"required":["name"]' in system["content"]
    assert out["messages"][1] == BYLLM_TYPED["messages"][1]
    no_system = adjust_request(
        "anthropic",
        {"model": "c", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}},
    )
    assert no_system["messages"][0] == {"role": "system", "content": no_system["messages"][0]["content"]}
    assert "JSON object" in no_system["messages"][0]["content"] and len(no_system["messages"]) == 2
    text = adjust_request("anthropic", {"model": "c", "messages": [], "response_format": {"type": "text"}})
    assert text == {"model": "c", "messages": []}


def test_anthropic_clamps_temperature_and_refuses_n():
    assert adjust_request("anthropic", {"model": "c", "messages": [], "temperature": 2})["temperature"] == 1.0
    assert adjust_request(
        "anthropic", {"model": "c", "messages": [], "n": 1, "stream_options": {"include_usage": True}}
    ) == {"model": "c", "messages": [], "n": 1, "stream_options": {"include_usage": True}}
    with pytest.raises(UnsupportedRequest) as caught:
        adjust_request("anthropic", {"model": "claude-3-5-haiku-latest", "messages": [], "n": 3})
    assert caught.value.status == 400 and caught.value.param == "n"
    assert "anthropic" in str(caught.value) and "claude-3-5-haiku-latest" in str(caught.value)


def test_anthropic_response_fences_removed_for_json_requests_only():
    fenced = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": '```json\n{"name": "x"}\n```'},
                "finish_reason": "stop",
            }
        ]
    }
    out = adjust_response("anthropic", fenced, BYLLM_TYPED)
    assert out["choices"][0]["message"]["content"] == '{"name": "x"}'
    assert fenced["choices"][0]["message"]["content"].startswith("```")  # not mutated
    assert adjust_response("anthropic", fenced, {"model": "c", "messages": []}) is fenced
    plain = {"choices": [{"message": {"role": "assistant", "content": '{"name": "x"}'}}]}
    assert adjust_response("anthropic", plain, BYLLM_TYPED) is plain


def test_gemini_drops_unknown_fields_and_schema_key():
    tools = [{"type": "function", "function": {"name": "roll", "parameters": {"$schema": "x", "type": "object"}}}]
    out = adjust_request("gemini", {**BYLLM_TYPED, "model": "gemini-2.0-flash", "store": False, "tools": tools})
    assert "metadata" not in out and "store" not in out and "max_tokens" not in out
    schema = out["response_format"]["json_schema"]["schema"]
    assert "$schema" not in schema and schema["additionalProperties"] is False
    assert out["response_format"]["json_schema"]["strict"] is True  # structured output is supported: kept
    assert out["tools"][0]["function"]["parameters"] == {"type": "object"}
    assert out["temperature"] == 0.7 and out["messages"] == BYLLM_TYPED["messages"]
    assert tools[0]["function"]["parameters"]["$schema"] == "x"


def test_gemini_response_tool_calls_finish_reason():
    call = {"id": "", "type": "function", "function": {"name": "roll", "arguments": "{}"}}
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": [call]}, "finish_reason": "stop"}]}
    assert adjust_response("gemini", body)["choices"][0]["finish_reason"] == "tool_calls"
    assert body["choices"][0]["finish_reason"] == "stop"
    text = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
    assert adjust_response("gemini", text) is text


# --- --check against real servers ------------------------------------------------------------


def test_check_routes_against_fake_providers(tmp_path, monkeypatch):
    with FakeUpstream() as claude_up, FakeUpstream() as gemini_up, FakeUpstream() as default_up:
        dead_port = free_port()
        path = write(
            tmp_path,
            f"""
            [[routes]]
            name = "fake-claude"
            pattern = "claude-*"
            provider = "anthropic"
            base_url = "{claude_up.url}"
            key_env = "TEAM_KEY"
            headers = {{ "anthropic-version" = "2023-06-01" }}

            [[routes]]
            name = "fake-gemini"
            pattern = "gemini-*"
            provider = "gemini"
            base_url = "{gemini_up.url}"

            [[routes]]
            name = "broken"
            pattern = "fail-*"
            provider = "openai-compatible"
            base_url = "{default_up.url}"
            check_model = "fail-500"

            [[routes]]
            name = "dead"
            pattern = "dead-model"
            provider = "openai-compatible"
            base_url = "http://127.0.0.1:{dead_port}/v1"

            [[routes]]
            name = "mystery"
            pattern = "mystery-*"
            provider = "openai-compatible"
            base_url = "{default_up.url}"
            check_model = "mystery-1"
        """,
        )
        # Only the fake Claude route has a key: the built-in provider routes must not reach the internet.
        monkeypatch.setenv("TEAM_KEY", "a-test-key")
        table = UpstreamTable.load(path, default_up.url)

        async def run():
            async with httpx.AsyncClient() as client:
                return await check_routes(table, client, model_for_route={"mystery": "mystery-2"})

        results = {r.route: r for r in asyncio.run(run())}

    assert list(results) == [
        "fake-claude",
        "fake-gemini",
        "broken",
        "dead",
        "mystery",
        "anthropic",
        "gemini",
        "default",
    ]
    claude = results["fake-claude"]
    assert claude.ok and claude.contacted and claude.status == 200 and claude.latency_ms > 0
    assert claude.model == "claude-3-5-haiku-latest"  # the provider's representative model for a glob route
    [sent] = claude_up.received
    assert sent["body"]["max_tokens"] == 1 and sent["body"]["model"] == "claude-3-5-haiku-latest"
    assert (
        sent["headers"]["authorization"] == "Bearer a-test-key" and sent["headers"]["anthropic-version"] == "2023-06-01"
    )

    gemini = results["fake-gemini"]
    assert not gemini.ok and not gemini.contacted and gemini.error == "key not set: GEMINI_API_KEY or GOOGLE_API_KEY"
    assert gemini_up.received == []  # never contacted

    assert (
        not results["broken"].ok and results["broken"].status == 500 and "upstream exploded" in results["broken"].error
    )
    assert not results["dead"].ok and results["dead"].contacted and results["dead"].error.startswith("unreachable")
    assert results["dead"].model == "dead-model"  # a plain pattern is its own check model
    assert results["mystery"].ok and results["mystery"].model == "mystery-2"
    assert results["anthropic"].error == "key not set: ANTHROPIC_API_KEY" and not results["anthropic"].contacted
    assert not results["gemini"].contacted
    default = results["default"]  # keyless local default: checked without a key
    assert default.ok and default.model == "gpt-4o-mini"
    default_models = [r["body"]["model"] for r in default_up.received]
    assert sorted(default_models) == ["fail-500", "gpt-4o-mini", "mystery-2"]
    assert all("authorization" not in r["headers"] for r in default_up.received)


def test_check_model_choice():
    table = UpstreamTable.load(None, OPENAI_URL)
    assert [check_model_for(r) for r in table.routes] == ["claude-3-5-haiku-latest", "gemini-2.0-flash", "gpt-4o-mini"]
    assert table.route_named("gemini").base_url == GEMINI_URL


def test_an_upstream_cookie_is_not_kept_for_other_requests(tmp_path):
    """Every client's calls share one upstream client: a Set-Cookie an upstream answers with is
    neither stored nor sent with the next request (aiohttp's default jar would keep it)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import aiohttp
    import yarl

    from understudy.proxy.upstream import Upstream
    from understudy.settings import Settings

    cookies_received: list[str | None] = []

    class SetsCookies(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            cookies_received.append(self.headers.get("cookie"))
            body = b'{"choices": []}'
            self.send_response(200)
            self.send_header("set-cookie", "session=client-a; Path=/")
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SetsCookies)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # a host name, not an address: aiohttp's default jar refuses cookies from IP addresses anyway
    url = f"http://localhost:{server.server_address[1]}/v1"
    settings = Settings(data_dir=tmp_path, upstream_url=url)
    table = UpstreamTable.load(None, url)
    resolution = table.resolve("gpt-4o-mini")

    async def two_calls(upstream: Upstream) -> int:
        for _ in range(2):
            request = upstream.build_chat_request(b"{}", {}, resolution, resolution.headers())
            response = await upstream.send(request, stream=False)
            assert response.status_code == 200 and "session=client-a" in response.headers["set-cookie"]
        kept = len(upstream.session.cookie_jar)
        await upstream.aclose()
        return kept

    async def plain_session() -> int:
        # The control: aiohttp's own jar keeps what the same upstream sets.
        async with aiohttp.ClientSession() as plain:
            async with plain.post(url + "/chat/completions", data=b"{}") as response:
                await response.read()
            return len(plain.cookie_jar.filter_cookies(yarl.URL(url)))

    try:
        upstream = Upstream(settings, table)
        assert asyncio.run(two_calls(upstream)) == 0
        assert cookies_received == [None, None]
        assert asyncio.run(plain_session()) == 1
    finally:
        server.shutdown()
