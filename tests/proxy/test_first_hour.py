"""A new user's first hour, command by command, against real proxies on 127.0.0.1: every
command prints what is true (addresses, routes, what it changed), every mistake is one line
and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import duckdb
import httpx
import pytest

from tests.conftest import VENV_BIN, query_store, run_cli, start_proxy
from tests.proxy.test_up import children_of
from tests.support.fake_upstream import FakeUpstream
from tests.support.showcase import level_request
from understudy.processes import start_teacher


def one_line_error(result: subprocess.CompletedProcess, code: int = 1) -> str:
    """The result failed with exactly one `error: ...` line and no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def launch(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [str(VENV_BIN / "understudy"), *args],
        env=env or os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def announced_url(process: subprocess.Popen, timeout: float = 90) -> tuple[str, list[str]]:
    """The `proxy on URL` line a starting proxy prints, and the lines before it."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            raise AssertionError(f"exited {process.poll()} before announcing: {seen}")
        seen.append(line.rstrip())
        match = re.search(r"proxy on (http://\S+/v1)", line)
        if match:
            return match.group(1), seen
    raise AssertionError(f"no address announced: {seen}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def post(url: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(url + "/chat/completions", json=body, headers=headers or {}, timeout=30)


# ---- addresses, busy data dirs, `up` and its upstream ------------------------------------------


def test_up_on_port_0_prints_the_address_it_listens_on_and_refuses_a_second_start(isolated_data_dir):
    up = launch("up", "--port", "0")
    try:
        url, before = announced_url(up)
        assert not url.endswith(":0/v1")
        assert any("offline teacher answers" in line for line in before)
        discovery = json.loads((isolated_data_dir / "proxy.json").read_text())
        assert discovery["url"] == url and discovery["root"] + "/v1" == url  # `url` is what a client is given
        assert httpx.get(discovery["root"] + "/healthz", timeout=5).status_code == 200

        for command in ("up", "serve"):  # a second proxy on the same data dir: one line, exit 1, nothing started
            second = run_cli(command, "--port", "0", check=False)
            line = one_line_error(second)
            assert f"already serves {isolated_data_dir}" in line and url in line
            assert "proxy on" not in second.stderr

        routes = run_cli("upstreams", "--check", "--json")
        described = json.loads(routes.stdout)
        default = next(r for r in described["routes"] if r["name"] == "default")
        teacher_url = next(line for line in before if "offline teacher" in line).rsplit(" ", 1)[1]
        assert default["base_url"] == teacher_url  # the running proxy's own route, not api.openai.com
        checks = {c["route"]: c for c in described["checks"]}
        assert checks["default"]["ok"] and checks["default"]["model"] == "understudy-teacher"
        assert not checks["anthropic"]["contacted"] and not checks["gemini"]["contacted"]
    finally:
        stop(up)


def test_a_store_held_by_another_process_is_one_line_not_a_traceback(isolated_data_dir):
    isolated_data_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            str(VENV_BIN / "python"),
            "-c",
            "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(120)",
            str(isolated_data_dir / "understudy.duckdb"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for command in ("serve", "up"):
            result = run_cli(command, "--port", "0", check=False)
            line = one_line_error(result)
            assert "is in use by process" in line and str(holder.pid) in line
            assert "proxy on" not in result.stderr
        children = children_of(os.getpid())
        assert not any("understudy teacher" in args or "understudy worker" in args for args in children.values())
    finally:
        holder.kill()
        holder.wait()
    # The control: once the holder is gone, the same command starts.
    serve = launch("serve", "--port", "0", "--upstream-url", "http://127.0.0.1:9/v1")
    try:
        url, _ = announced_url(serve)
        assert httpx.get(url.removesuffix("/v1") + "/healthz", timeout=5).status_code == 200
    finally:
        stop(serve)


def test_up_with_an_upstream_url_and_no_key_forwards_there_without_a_teacher(isolated_data_dir):
    with FakeUpstream() as upstream:
        up = launch("up", "--port", "0", "--upstream-url", upstream.url)
        try:
            url, before = announced_url(up)
            assert not any("teacher" in line for line in before), before
            assert any(upstream.url in line for line in before)
            assert not any("understudy teacher" in args for args in children_of(up.pid).values())
            assert (
                post(url, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
            )
            assert len(upstream.received) == 1
            default = next(
                r for r in json.loads(run_cli("upstreams", "--json").stdout)["routes"] if r["name"] == "default"
            )
            assert default["base_url"] == upstream.url
        finally:
            stop(up)


# ---- upstream checks -----------------------------------------------------------------------


def test_upstream_checks_use_a_model_the_route_serves_and_contact_no_vendor_without_a_key(tmp_path):
    teacher = start_teacher()
    try:
        config = tmp_path / "upstreams.toml"
        config.write_text(f"""
[[routes]]
name = "teach-own"
pattern = "understudy-*"
provider = "openai-compatible"
base_url = "{teacher.url}"

[[routes]]
name = "teach-nothing"
pattern = "teach-*"
provider = "openai-compatible"
base_url = "{teacher.url}"
""")
        result = run_cli(
            "upstreams",
            "--check",
            "--json",
            "--config",
            str(config),
            "--upstream-url",
            "https://api.openai.com/v1",
            check=False,
        )
    finally:
        teacher.stop()
    checks = {c["route"]: c for c in json.loads(result.stdout)["checks"]}
    # the model comes from the server's own list and matches the route's pattern
    assert checks["teach-own"]["ok"] and checks["teach-own"]["model"] == "understudy-teacher"
    # the control: a pattern nothing listed matches is reported, not checked with gpt-4o-mini
    assert (
        not checks["teach-nothing"]["contacted"] and "no model matching 'teach-*'" in checks["teach-nothing"]["error"]
    )
    # keyless OpenAI itself: reported, not contacted (there is no key to send)
    assert not checks["default"]["contacted"] and "not contacted" in checks["default"]["error"]
    assert result.returncode == 0  # nothing contacted failed


# ---- manual tags, names, renames -------------------------------------------------------------


def test_a_hand_set_tag_gets_a_site_of_its_own_and_a_plugin_tag_keeps_history(proxy):
    url = proxy.url + "/v1"
    body = level_request(2, 20, 12)
    first = post(url, body).headers["x-understudy-site"]
    post(url, level_request(3, 20, 12))
    tagged = post(url, level_request(4, 20, 12), {"X-Understudy-Site": "my-site"})
    assert tagged.status_code == 200 and tagged.headers["x-understudy-site"] != first
    assert post(url, level_request(5, 20, 12)).headers["x-understudy-site"] == first  # untagged stays put
    sites = {s["name"]: s for s in json.loads(proxy.cli("sites", "--json").stdout)}
    assert sites["my-site"]["calls"] == 1 and sites["my-site"]["id"] != first
    assert next(s for s in sites.values() if s["id"] == first)["calls"] == 3

    # The control: the plugin's exact tag on the same signature takes the history over (continuity).
    plugin = {
        **level_request(6, 20, 12),
        "metadata": {"understudy_site": "rpg.create_next_level", "understudy_site_source": "plugin"},
    }
    assert post(url, plugin).headers["x-understudy-site"] == first
    assert json.loads(proxy.cli("sites", "--json").stdout)[0]["name"] == "rpg.create_next_level"

    # A hand tag naming a site someone renamed joins that site.
    proxy.cli("sites", "rename", "my-site", "boss-levels")
    other = {**level_request(7, 22, 12), "temperature": 0.2}
    assert post(url, other, {"X-Understudy-Site": "boss-levels"}).headers["x-understudy-site"] == sites["my-site"]["id"]


def test_any_former_name_finds_a_site_and_a_miss_lists_candidates(proxy):
    url = proxy.url + "/v1"
    site = post(url, level_request(2, 20, 12)).headers["x-understudy-site"]
    slug = json.loads(proxy.cli("sites", "--json").stdout)[0]["name"]
    assert slug.startswith("Level:")  # a docstring slug: how litellm's calls name it
    named = {**level_request(3, 20, 12), "metadata": {"jac_caller_name": "create_next_level"}}
    post(url, named)
    assert json.loads(proxy.cli("sites", "--json").stdout)[0]["name"] == "create_next_level"
    for ref in (slug, "create_next_level", site[:6]):
        assert json.loads(proxy.cli("versions", ref, "--json").stdout) == []
        assert json.loads(proxy.cli("calls", ref, "--json", "--limit", "1").stdout)[0]["site_id"] == site
    line = one_line_error(proxy.cli("export", "create_next_lvl", "--jsonl", "/tmp/x.jsonl", check=False))
    assert "did you mean: create_next_level" in line and site in line
    one_line_error(proxy.cli("report", "nothing-like-it", check=False))


def test_rename_refuses_empty_and_taken_names_in_one_line(proxy):
    url = proxy.url + "/v1"
    a = post(url, level_request(2, 20, 12)).headers["x-understudy-site"]
    b = post(url, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}).headers[
        "x-understudy-site"
    ]
    assert "give a site id" in one_line_error(proxy.cli("sites", "rename", "", "x", check=False))
    assert "must not be empty" in one_line_error(proxy.cli("sites", "rename", a, " ", check=False))
    proxy.cli("sites", "rename", a, "levels")
    line = one_line_error(proxy.cli("sites", "rename", b, "levels", check=False))
    assert f"site {a} is already called 'levels'" in line
    assert json.loads(proxy.cli("calls", "levels", "--json").stdout)[0]["site_id"] == a  # the name still works
    proxy.cli("sites", "rename", b, "greetings")  # the control: a free name is taken
    assert {s["name"] for s in json.loads(proxy.cli("sites", "--json").stdout)} == {"levels", "greetings"}
    # the admin API says the same, as an OpenAI-style error
    response = httpx.post(
        f"{proxy.url}/admin/sites/{b}/rename",
        json={"name": "levels"},
        headers={"authorization": f"Bearer {proxy.admin_token}"},
    )
    assert response.status_code == 409 and response.json()["error"]["code"] == "name_taken"


def test_rename_without_a_proxy_refuses_the_same(proxy, isolated_data_dir):
    url = proxy.url + "/v1"
    a = post(url, level_request(2, 20, 12)).headers["x-understudy-site"]
    b = post(url, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}).headers[
        "x-understudy-site"
    ]
    proxy.cli("sites", "rename", a, "levels")
    proxy.stop()
    assert "already called" in one_line_error(run_cli("sites", "rename", b, "levels", check=False))
    run_cli("sites", "rename", b, "hello-site")
    assert query_store(isolated_data_dir, "SELECT name FROM sites ORDER BY name") == [("hello-site",), ("levels",)]


# ---- limits, rollback, policy ------------------------------------------------------------------


def test_calls_limit_must_be_positive_through_the_proxy_and_without(proxy):
    site = post(proxy.url + "/v1", level_request(2, 20, 12)).headers["x-understudy-site"]
    assert "--limit must be at least 1" in one_line_error(proxy.cli("calls", site, "--limit", "-1", check=False), 2)
    response = httpx.get(
        f"{proxy.url}/admin/sites/{site}/calls",
        params={"limit": -1},
        headers={"authorization": f"Bearer {proxy.admin_token}"},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "limit"
    assert len(json.loads(proxy.cli("calls", site, "--limit", "1", "--json").stdout)) == 1  # the control


def test_actions_that_would_change_nothing_fail_and_write_no_audit(proxy, isolated_data_dir):
    site = post(proxy.url + "/v1", level_request(2, 20, 12)).headers["x-understudy-site"]
    line = one_line_error(proxy.cli("rollback", site, check=False))
    assert "no active version to roll back" in line and "never had a version" in line
    assert "no v3" in one_line_error(proxy.cli("rollback", site, "--to", "v3", check=False))
    assert "not pinned: nothing to unpin" in one_line_error(proxy.cli("unpin", site, check=False))
    proxy.cli("pin", site, "upstream")  # the control: an action that applies is audited
    assert "already pinned to upstream" in one_line_error(proxy.cli("pin", site, "upstream", check=False))
    proxy.cli("unpin", site)
    proxy.stop()
    assert query_store(isolated_data_dir, "SELECT action FROM audit WHERE site_id = ? ORDER BY ts", [site]) == [
        ("pin",),
        ("unpin",),
    ]


def test_policy_merges_prints_the_result_and_refuses_wrong_types(proxy):
    site = post(proxy.url + "/v1", level_request(2, 20, 12)).headers["x-understudy-site"]
    bad = proxy.cli("policy", site, '{"promotion": {"min_samples": "x"}}', check=False)
    assert "min_samples must be int, not 'x'" in one_line_error(bad)
    assert "promotion must be a JSON object" in one_line_error(
        proxy.cli("policy", site, '{"promotion": 5}', check=False)
    )

    proxy.cli("policy", site, '{"promotion": {"min_samples": 50}}')
    out = proxy.cli("policy", site, '{"scoring": {"number_tolerance": 0.2}}').stdout
    assert '"min_samples": 50' in out.split("in effect:")[0] and '"number_tolerance": 0.2' in out.split("in effect:")[0]
    effective = json.loads(out.split("in effect:", 1)[1])
    assert effective["promotion"]["min_samples"] == 50 and effective["promotion"]["margin"] == 0.1
    assert effective["scoring"]["number_tolerance"] == 0.2 and effective["scoring"]["creative_paths"] == ["name"]
    # the text report shows the site's overrides
    report = proxy.cli("report", site).stdout
    assert '"min_samples": 50' in " ".join(report.split()).replace("│ ", "").replace(" │", "")

    removed = proxy.cli("policy", site, '{"promotion": null}').stdout
    assert "min_samples" not in removed.split("in effect:")[0] and "number_tolerance" in removed.split("in effect:")[0]
    cleared = proxy.cli("policy", site, "{}", "--replace").stdout
    assert "site overrides none" in cleared
    assert "site overrides none" in proxy.cli("policy", site).stdout


# ---- metrics, docs, prices ---------------------------------------------------------------------


def _rejected(metrics: str, reason: str) -> float:
    match = re.search(rf'understudy_rejected_requests_total{{reason="{reason}"}} (\S+)', metrics)
    return float(match.group(1)) if match else 0.0


def test_a_413_counts_among_rejected_requests(fake_upstream, isolated_data_dir):
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, "--max-body-bytes", "2000")
    try:
        assert _rejected(httpx.get(proxy.url + "/metrics").text, "request_too_large") == 0
        small = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        assert post(proxy.url + "/v1", small).status_code == 200  # the control: under the limit, not rejected
        big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 5000}]}
        response = post(proxy.url + "/v1", big)
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
        assert _rejected(httpx.get(proxy.url + "/metrics").text, "request_too_large") == 1
    finally:
        proxy.stop()


def test_the_schema_page_is_self_contained(proxy):
    page = httpx.get(proxy.url + "/schema")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "/v1/chat/completions" in html and "/schema/openapi.json" in html and "messages" in html
    assert "<script" not in html
    assert re.findall(r"""(?:src|href)=['"]?https?://""", html) == []  # nothing to fetch from the internet
    assert httpx.get(proxy.url + "/schema/openapi.json").json()["paths"]


def test_the_offline_teacher_costs_nothing_even_priced_as_gpt_4o_mini(isolated_data_dir):
    teacher = start_teacher()
    try:
        proxy = start_proxy(isolated_data_dir, teacher.url)  # no --upstream-free: the teacher says it is free
        try:
            assert post(proxy.url + "/v1", level_request(2, 20, 12)).status_code == 200
            streamed = {**level_request(3, 20, 12), "stream": True}
            with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=streamed, timeout=30) as response:
                response.read()
        finally:
            proxy.stop()
    finally:
        teacher.stop()
    costs = query_store(isolated_data_dir, "SELECT cost_usd FROM calls ORDER BY ts")
    assert costs == [(0.0,), (0.0,)]


def test_a_paid_upstream_still_costs_its_price(fake_upstream, isolated_data_dir):
    """The control: an upstream that does not say it is free is priced (gpt-4o-mini, 11 + 7 tokens)."""
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        assert post(proxy.url + "/v1", level_request(2, 20, 12)).status_code == 200
    finally:
        proxy.stop()
    [(cost,)] = query_store(isolated_data_dir, "SELECT cost_usd FROM calls")
    assert cost == pytest.approx((11 * 0.15 + 7 * 0.60) / 1e6)


def test_store_resolution_reads_site_names_of_an_older_store(tmp_path):
    """A store from before site_names gets the table on open, filled from names and tags."""
    path = tmp_path / "old.duckdb"
    from understudy.store import Store

    Store(path).close()
    con = duckdb.connect(str(path))  # back to the schema before m006
    con.execute("DROP TABLE site_names")
    con.execute("DELETE FROM _migrations WHERE name = 'm007_site_names'")
    con.execute(
        "INSERT INTO sites (id, name, name_source, kind, created_at, tag) VALUES "
        "('abc123', 'pkg.fn', 'explicit', 'explicit', now(), 'pkg.fn')"
    )
    con.close()
    store = Store(path)
    try:
        assert store.resolve_site("pkg.fn").id == "abc123"
        store.set_site_name("abc123", "better", "user")
        assert store.resolve_site("pkg.fn").id == "abc123" and store.site_names("abc123") == ["pkg.fn", "better"]
    finally:
        store.close()
