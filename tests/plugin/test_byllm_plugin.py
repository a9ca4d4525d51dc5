"""The Jac plugin (understudy.byllm.plugin): real `jac run` programs against a real fake OpenAI server.

Each program runs in tmp_path (caches included) with `OPENAI_BASE_URL` unset unless a test is
about the program's own base URL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.fake_upstream import FakeUpstream, default_reply

VENV_BIN = Path(sys.executable).parent
JAC_DIR = Path(__file__).parent / "jac"
RETRY_MARKER = "Your previous response could not be used"
WARNING_PREFIX = "understudy: "

# Every site of sites.jac and the turns it sends: (site, turns); turns in order of arrival.
LITELLM_SITES = [
    ("sites.A.describe", 1),
    ("sites.B.describe", 1),
    ("sites.make_level", 2),
    ("sites.narrate", 1),
    ("sites.pick_boss", 2),
    ("sites.describe_async", 1),
    ("sites.narrate_async", 1),
]
# http_client: async streaming is not run (byLLM 0.6.19 reads an SSE reply as JSON there).
HTTP_SITES = [s for s in LITELLM_SITES if s[0] != "sites.narrate_async"]


def scripted_reply(body: dict) -> str:
    """Typed sites fail once (a retry follows); the tool site calls a tool once (a tool step follows)."""
    text = json.dumps(body.get("messages", []))
    if "<tool_response>" in text:
        return "Ogre"
    if "# Calling tools" in text:
        return "roll_dice(sides=6)"
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema" and RETRY_MARKER not in text:
        return '{"name": "trunc'
    return default_reply(body)


@pytest.fixture(scope="module")
def jac_cache(tmp_path_factory) -> Path:
    """One compile cache for the module's runs (byLLM's own .jac modules compile once)."""
    return tmp_path_factory.mktemp("jac-cache")


def run_jac(
    tmp_path: Path, program: str, env_overrides: dict[str, str], cache: Path, extra_pythonpath: Path | None = None
) -> subprocess.CompletedProcess:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    shutil.copy(JAC_DIR / program, work / program)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "UNDERSTUDY_URL", "PYTHONPATH")
        and not k.startswith("PLUGIN_")
    }
    env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "XDG_CACHE_HOME": str(cache), "HOME": str(tmp_path / "home")})
    if extra_pythonpath is not None:
        env["PYTHONPATH"] = str(extra_pythonpath)
    env.update(env_overrides)
    return subprocess.run(
        [str(VENV_BIN / "jac"), "run", program], capture_output=True, text=True, timeout=120, env=env, cwd=work
    )


def sites_seen(received: list[dict]) -> list[tuple[str | None, str | None]]:
    """(metadata.understudy_site, X-Understudy-Site header) of each request, in order."""
    out = []
    for request in received:
        metadata = request["body"].get("metadata") or {}
        out.append((metadata.get("understudy_site"), request["headers"].get("x-understudy-site")))
    return out


def expected_sites(spec: list[tuple[str, int]]) -> list[str]:
    return [site for site, turns in spec for _ in range(turns)]


def assert_program_ran(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    for label in ("A:", "B:", "level:", "stream:", "boss: Ogre", "async:"):
        assert label in result.stdout, result.stdout


def turn_kinds(received: list[dict]) -> list[str]:
    kinds = []
    for request in received:
        text = json.dumps(request["body"]["messages"])
        kinds.append("tool_step" if "<tool_response>" in text else "retry" if RETRY_MARKER in text else "first")
    return kinds


def test_litellm_transport_every_request_goes_to_the_proxy_tagged(tmp_path, jac_cache):
    with FakeUpstream(scripted_reply) as proxy:
        result = run_jac(tmp_path, "sites.jac", cache=jac_cache, env_overrides={"UNDERSTUDY_URL": proxy.url})
        received = list(proxy.received)
    assert_program_ran(result)
    assert "async stream:" in result.stdout
    assert WARNING_PREFIX not in result.stderr
    assert all(r["path"] == "/v1/chat/completions" for r in received)
    # body metadata and header on every request, twins told apart, retries and tool steps included
    assert sites_seen(received) == [(s, s) for s in expected_sites(LITELLM_SITES)]
    assert turn_kinds(received).count("retry") == 1 and turn_kinds(received).count("tool_step") == 1
    streamed = [r["body"].get("metadata", {}).get("understudy_site") for r in received if r["body"].get("stream")]
    assert streamed == ["sites.narrate", "sites.narrate_async"]
    # litellm's own `metadata` (byLLM's jac_* fields) stays out of the body; the model is plain
    # the plugin's tag, marked as the plugin's (only such a tag may claim an untagged site's history)
    assert all(set(r["body"]["metadata"]) == {"understudy_site", "understudy_site_source"} for r in received)
    assert {r["body"]["metadata"]["understudy_site_source"] for r in received} == {"plugin"}
    assert {r["body"]["model"] for r in received} == {"gpt-4o-mini"}
    assert {r["headers"]["authorization"] for r in received} == {"Bearer sk-plugin-test"}


def test_http_client_transport_overrides_the_programs_base_url(tmp_path, jac_cache):
    # The program's own base URL is a dead port: only the plugin's override reaches the server.
    with FakeUpstream(scripted_reply) as proxy:
        result = run_jac(
            tmp_path,
            "sites.jac",
            cache=jac_cache,
            env_overrides={
                "UNDERSTUDY_URL": proxy.url,
                "PLUGIN_HTTP_CLIENT": "1",
                "PLUGIN_BASE_URL": "http://127.0.0.1:9/v1/chat/completions",
            },
        )
        received = list(proxy.received)
    assert_program_ran(result)
    assert WARNING_PREFIX not in result.stderr
    seen = sites_seen(received)
    assert [body_site for body_site, _ in seen] == expected_sites(HTTP_SITES)
    for request, (body_site, header) in zip(received, seen):
        if request["body"].get("stream"):
            # byLLM's synchronous streaming never uses http_client: it goes through litellm
            assert header == body_site == "sites.narrate"
        else:
            # http_client: byLLM's fixed headers; its own metadata kept beside the tag
            assert header is None
            assert request["body"]["metadata"]["jac_caller_name"] == body_site.rsplit(".", 1)[1]
    assert turn_kinds(received).count("retry") == 1 and turn_kinds(received).count("tool_step") == 1


@pytest.mark.parametrize("transport", ["litellm", "http_client"])
def test_inert_without_understudy_url(tmp_path, jac_cache, transport):
    with FakeUpstream(scripted_reply) as own:
        env = {"OPENAI_BASE_URL": own.url}
        if transport == "http_client":
            env |= {"PLUGIN_HTTP_CLIENT": "1", "PLUGIN_BASE_URL": own.url + "/chat/completions"}
        result = run_jac(tmp_path, "sites.jac", cache=jac_cache, env_overrides=env)
        received = list(own.received)
    assert_program_ran(result)
    assert WARNING_PREFIX not in result.stderr
    spec = LITELLM_SITES if transport == "litellm" else HTTP_SITES
    assert len(received) == len(expected_sites(spec))
    assert all(r["path"] == "/v1/chat/completions" for r in received)
    assert sites_seen(received) == [(None, None)] * len(received)
    for request in received:
        metadata = request["body"].get("metadata")
        if transport == "litellm" or request["body"].get("stream"):
            assert metadata is None  # litellm keeps byLLM's metadata out of the body, as before
        else:
            assert "understudy_site" not in metadata and "jac_caller_name" in metadata


def test_unknown_model_class_goes_ahead_untouched_with_one_warning(tmp_path, jac_cache):
    with FakeUpstream() as proxy, FakeUpstream() as own:
        result = run_jac(
            tmp_path,
            "unknown_model.jac",
            cache=jac_cache,
            env_overrides={"UNDERSTUDY_URL": proxy.url, "OPENAI_BASE_URL": own.url},
        )
        assert proxy.received == []
        received = list(own.received)
    assert result.returncode == 0, result.stderr
    assert "first: echo" in result.stdout and "second: echo" in result.stdout
    assert len(received) == 2 and sites_seen(received) == [(None, None)] * 2
    warnings = [line for line in result.stderr.splitlines() if line.startswith(WARNING_PREFIX)]
    assert len(warnings) == 1 and "HouseModel" in warnings[0], result.stderr


def test_unknown_byllm_version_goes_ahead_untouched_with_one_warning(tmp_path, jac_cache):
    # sitecustomize makes importlib.metadata report another byLLM version in the child process.
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import importlib.metadata as m\n"
        "_version = m.version\n"
        "m.version = lambda name: '0.7.0' if name == 'byllm' else _version(name)\n"
    )
    with FakeUpstream(scripted_reply) as proxy, FakeUpstream(scripted_reply) as own:
        result = run_jac(
            tmp_path,
            "sites.jac",
            cache=jac_cache,
            env_overrides={"UNDERSTUDY_URL": proxy.url, "OPENAI_BASE_URL": own.url},
            extra_pythonpath=shim,
        )
        assert proxy.received == []
        received = list(own.received)
    assert_program_ran(result)
    assert len(received) == len(expected_sites(LITELLM_SITES))
    assert sites_seen(received) == [(None, None)] * len(received)
    warnings = [line for line in result.stderr.splitlines() if line.startswith(WARNING_PREFIX)]
    assert len(warnings) == 1 and "0.7.0" in warnings[0], result.stderr


# ------------------------------------------------------------------ in-process checks


@pytest.fixture
def plugin(monkeypatch):
    """The plugin module with its per-process state reset (restored afterwards)."""
    from understudy.byllm import plugin as byllm_plugin

    for name, value in (
        ("_warned", False),
        ("_installed", None),
        ("_install_failed", False),
        ("_known_classes", {}),
        ("_originals", {}),
    ):
        monkeypatch.setattr(byllm_plugin, name, value)
    monkeypatch.setenv("UNDERSTUDY_URL", "http://127.0.0.1:1/v1/")
    return byllm_plugin


class FakeModel:
    """Stands in for byllm.llm.Model (the wrappers go on this class, never on byLLM's)."""

    http_client = False
    proxy = False
    api_key = "sk-x"

    def make_model_params(self, mt_run):
        return {
            "model": "anthropic/claude-x",
            "messages": [],
            "api_base": "http://own/v1",
            "metadata": {"jac_caller_name": "f"},
        }

    def model_call_no_stream(self, params):
        return params

    def model_call_with_stream(self, params):
        return params

    async def model_call_no_stream_async(self, params):
        return params

    async def model_call_with_stream_async(self, params):
        return params


def test_exception_inside_the_plugin_leaves_the_request_untouched_and_warns_once(plugin, capsys):
    class Model(FakeModel):
        pass

    assert plugin._install(Model)

    class Exploding:
        @property
        def mtir(self):
            raise RuntimeError("boom")

    for _ in range(3):
        params = Model().make_model_params(Exploding())
        assert params["api_base"] == "http://own/v1" and "understudy_site" not in params["metadata"]
    err = capsys.readouterr().err
    assert err.count(WARNING_PREFIX) == 1 and "boom" in err


def test_wrappers_tag_and_redirect_per_transport(plugin):
    class Model(FakeModel):
        pass

    assert plugin._install(Model)

    def caller():
        pass

    mt_run = SimpleNamespace(mtir=SimpleNamespace(caller=caller))
    site = f"{__name__}.test_wrappers_tag_and_redirect_per_transport.<locals>.caller"
    model = Model()
    params = model.make_model_params(mt_run)
    assert params["metadata"] == {"jac_caller_name": "f", "understudy_site": site, "understudy_site_source": "plugin"}
    assert params["api_base"] == "http://127.0.0.1:1/v1"
    sent = model.model_call_no_stream(params)
    assert sent["api_base"] == "http://127.0.0.1:1/v1" and sent["custom_llm_provider"] == "openai"
    assert sent["model"] == "claude-x"
    assert sent["extra_body"] == {"metadata": {"understudy_site": site, "understudy_site_source": "plugin"}}
    assert sent["extra_headers"] == {"X-Understudy-Site": site}

    model.http_client = True
    params = model.make_model_params(mt_run)
    assert params["api_base"] == "http://127.0.0.1:1/v1/chat/completions"
    assert model.model_call_no_stream(params) == params  # the body as it is
    assert model.model_call_with_stream(params)["custom_llm_provider"] == "openai"  # sync stream: litellm

    # No caller (compaction, visit routing): redirected, untagged.
    params = Model().make_model_params(SimpleNamespace(mtir=None))
    assert "understudy_site" not in params["metadata"] and params["api_base"] == "http://127.0.0.1:1/v1"


def test_missing_method_means_no_attach_and_one_warning(plugin, capsys):
    class Model(FakeModel):
        model_call_with_stream_async = None

    assert not plugin._install(Model)
    assert not plugin._install(Model)
    assert Model.make_model_params is FakeModel.make_model_params  # nothing wrapped
    err = capsys.readouterr().err
    assert err.count(WARNING_PREFIX) == 1 and "model_call_with_stream_async" in err


def test_inert_when_unset(plugin, monkeypatch):
    monkeypatch.delenv("UNDERSTUDY_URL")
    assert plugin.UnderstudyPlugin.call_llm(model=object(), mt_run=None) is None
    assert plugin.UnderstudyPlugin.acall_llm(model=object(), mt_run=None) is None
    assert plugin._installed is None


def test_site_name_uses_byllms_main_rule(plugin, monkeypatch):
    main = SimpleNamespace(__file__="/somewhere/quiz.impl.jac")
    monkeypatch.setitem(sys.modules, "__main__", main)
    hint = SimpleNamespace(__module__="__main__", __qualname__="Question.hint")
    assert plugin.site_name(hint) == "quiz.Question.hint"
    assert plugin.site_name(SimpleNamespace(__module__="game.levels", __qualname__="make")) == "game.levels.make"
    assert plugin.site_name(None) is None


def test_plugin_is_asked_before_byllm_whatever_the_registration_order(tmp_path):
    """In a process with UNDERSTUDY_URL set, a plugin registered after ours still comes second."""
    code = (
        "import jaclang\n"
        "from jaclang.jac0core.runtime import plugin_manager as pm, hookimpl\n"
        "class Late:\n"
        "    @staticmethod\n"
        "    @hookimpl\n"
        "    def call_llm(model, mt_run):\n"
        "        return 'late'\n"
        "pm.register(Late, name='late')\n"
        "print(','.join(h.plugin_name for h in pm.hook.call_llm.get_hookimpls()))\n"
        "print(','.join(h.plugin_name for h in pm.hook.acall_llm.get_hookimpls()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"UNDERSTUDY_URL": "http://127.0.0.1:1/v1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 0, result.stderr
    call_order, acall_order = result.stdout.split()
    assert call_order.split(",")[-1] == "understudy" and "byllm" in call_order and "late" in call_order
    assert acall_order.split(",")[-1] == "understudy"
