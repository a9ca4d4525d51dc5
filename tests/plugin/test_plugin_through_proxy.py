"""The plugin end to end: a Jac program with twin methods runs through the real proxy with only
`UNDERSTUDY_URL` set (no `OPENAI_BASE_URL`), on both transports; the store holds the twins as two
sites under their exact `<module>.<qualname>` names. Continuity with an untagged history too."""

from __future__ import annotations

import json

import pytest

from tests.conftest import start_proxy
from tests.plugin.test_byllm_plugin import assert_program_ran, run_jac, scripted_reply

TWINS = {"sites.A.describe", "sites.B.describe"}


@pytest.fixture(scope="module")
def jac_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jac-cache")


@pytest.mark.parametrize("transport", ["litellm", "http_client"])
def test_twins_are_two_named_sites_in_the_store(fake_upstream, isolated_data_dir, tmp_path, jac_cache, transport):
    fake_upstream.reply = scripted_reply
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        env = {
            "UNDERSTUDY_URL": proxy.url + "/v1",
            **({"PLUGIN_HTTP_CLIENT": "1"} if transport == "http_client" else {}),
        }
        assert_program_ran(run_jac(tmp_path, "sites.jac", env, jac_cache))
        sites = {row["name"]: row for row in json.loads(proxy.cli("sites", "--json").stdout)}
    finally:
        proxy.stop()
    assert TWINS <= set(sites) and sites["sites.A.describe"]["id"] != sites["sites.B.describe"]["id"]
    assert {"sites.make_level", "sites.narrate", "sites.pick_boss"} <= set(sites)
    assert sites["sites.make_level"]["calls"] == 2  # the first answer and byLLM's retry, one site
    assert all(name.startswith("sites.") for name in sites)  # every request carried its site


def test_plugin_continues_an_untagged_history(fake_upstream, isolated_data_dir, tmp_path, jac_cache):
    """Recorded without the plugin first (base URL), then with it: the history stays with its site."""
    fake_upstream.reply = scripted_reply
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        assert_program_ran(
            run_jac(
                tmp_path,
                "sites.jac",
                {"OPENAI_BASE_URL": proxy.url + "/v1", "OPENAI_API_KEY": "sk-plugin-test"},
                jac_cache,
            )
        )
        before = {row["id"]: row for row in json.loads(proxy.cli("sites", "--json").stdout)}
        assert_program_ran(run_jac(tmp_path, "sites.jac", {"UNDERSTUDY_URL": proxy.url + "/v1"}, jac_cache))
        after = {row["name"]: row for row in json.loads(proxy.cli("sites", "--json").stdout)}
    finally:
        proxy.stop()
    level = after["sites.make_level"]
    assert level["id"] in before and level["calls"] == 4  # two runs, one site, renamed by its tag
    twin_ids = {after[name]["id"] for name in TWINS}
    assert len(twin_ids) == 2 and len(twin_ids & set(before)) == 1  # the first twin kept the shared history
