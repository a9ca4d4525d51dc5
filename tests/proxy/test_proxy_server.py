"""The proxy as it runs in production (`understudy serve`) against a fake upstream on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import VENV_BIN, open_test_store, start_proxy

CHAT = "/v1/chat/completions"
STORE_BACKENDS = ("duckdb", "postgresql")  # recording, streams, tags and shutdown on both stores


def chat(proxy, body, **kwargs) -> httpx.Response:
    return httpx.post(proxy.url + CHAT, json=body, timeout=30, **kwargs)


def stored_calls(data_dir) -> list[dict]:
    """Every recorded call, oldest first, from the test's store (either backend)."""
    store = open_test_store(data_dir / "understudy.duckdb", read_only=True)
    try:
        cursor = store.cursor().execute("SELECT * FROM calls ORDER BY ts")
        columns = [d[0] for d in cursor.description]
        return [dict(zip(columns, row)) for row in cursor.fetchall()]
    finally:
        store.close()


def typed_body(name="Level"):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "difficulty": {"type": "integer"}},
        "required": ["name", "difficulty"],
        "additionalProperties": False,
    }
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "This is a task you must complete by returning only the output."},
            {"role": "user", "content": "Create the next level.\n\ndifficulty = (4, '')"},
        ],
        "response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": schema}},
        "temperature": 0.7,
    }


def test_forwards_records_and_tags_every_response(proxy, fake_upstream):
    response = chat(proxy, typed_body(), headers={"authorization": "Bearer sk-client-secret"})
    assert response.status_code == 200
    content = json.loads(response.json()["choices"][0]["message"]["content"])
    assert set(content) == {"name", "difficulty"}
    site = response.headers["x-understudy-site"]
    assert response.headers["x-understudy-served-by"] == "upstream"
    assert fake_upstream.received[-1]["headers"]["authorization"] == "Bearer sk-client-secret"

    proxy.stop()
    [call] = stored_calls(proxy.data_dir)
    assert call["site_id"] == site and call["status"] == 200 and call["valid"] is True
    assert call["prompt_tokens"] == 11 and call["completion_tokens"] == 7
    assert call["cost_usd"] == pytest.approx((11 * 0.15 + 7 * 0.60) / 1e6)
    assert "sk-client-secret" not in json.dumps(call, default=str)


def test_streams_pass_through_chunk_by_chunk_and_are_reassembled(proxy):
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Narrate.\n\nlevel_name = ('Crypt', '')"}],
    }
    chunks = []
    with httpx.stream("POST", proxy.url + CHAT, json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-understudy-site"]
        for chunk in response.iter_bytes():
            chunks.append(chunk)
    assert len(chunks) > 1 and b"".join(chunks).rstrip().endswith(b"data: [DONE]")
    proxy.stop()
    [call] = stored_calls(proxy.data_dir)
    completion = json.loads(call["response"])
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == "echo of 1 messages"
    assert call["stream"] is True and call["completion_tokens"] == 7 and call["valid"] is None


def test_tools_pass_through(proxy, fake_upstream):
    tools = [
        {"type": "function", "function": {"name": "roll_dice", "parameters": {"type": "object", "properties": {}}}}
    ]
    body = {"model": "gpt-4o-mini", "tools": tools, "messages": [{"role": "user", "content": "Pick.\n\nx = (1, '')"}]}
    assert chat(proxy, body).status_code == 200
    assert fake_upstream.received[-1]["body"]["tools"] == tools


def test_bad_input_gets_openai_errors_and_is_never_forwarded(fake_upstream, isolated_data_dir):
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, "--max-body-bytes", "2048")
    try:
        cases = [
            (b"{not json", "invalid_json"),
            (b'{"model": "m"}', "invalid_request"),
            (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "invalid_request"),
            (b'{"model": "m", "messages": "hello"}', "invalid_request"),
            (b'{"model": "m", "messages": []}', "invalid_request"),
            (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "invalid_request"),
            (b"[1, 2]", "invalid_request"),
        ]
        for raw, code in cases:
            response = httpx.post(proxy.url + CHAT, content=raw, headers={"content-type": "application/json"})
            assert response.status_code == 400, raw
            assert response.json()["error"]["code"] == code
            assert response.json()["error"]["type"] == "invalid_request_error"
        big = {"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]}
        response = chat(proxy, big)
        assert response.status_code == 413 and "error" in response.json()
        assert fake_upstream.received == []
        assert httpx.get(proxy.url + "/healthz").json()["status"] == "ok"
    finally:
        proxy.stop()


def test_upstream_errors_come_back_as_openai_errors(proxy, fake_upstream):
    response = chat(proxy, {"model": "fail-500", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 500 and response.json()["error"]["message"] == "upstream exploded"
    response = chat(proxy, {"model": "fail-text", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 503 and response.json()["error"]["code"] == "upstream_http_503"
    proxy.stop()
    statuses = sorted(call["status"] for call in stored_calls(proxy.data_dir))
    assert statuses == [500, 503]


def test_unreachable_upstream_is_a_502(isolated_data_dir):
    from tests.support.fake_upstream import free_port

    proxy = start_proxy(isolated_data_dir, f"http://127.0.0.1:{free_port()}/v1")
    try:
        response = chat(proxy, {"model": "m", "messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_unreachable"
        assert response.headers["x-understudy-site"]
    finally:
        proxy.stop()


def test_configured_upstream_key_replaces_the_clients_and_is_never_stored(fake_upstream, isolated_data_dir):
    proxy = start_proxy(isolated_data_dir, fake_upstream.url, "--upstream-key", "sk-upstream-secret")
    body = typed_body()
    body["messages"][1]["content"] += "\nextra = ('sk-upstream-secret', '')"
    assert chat(proxy, body, headers={"authorization": "Bearer sk-client"}).status_code == 200
    assert fake_upstream.received[-1]["headers"]["authorization"] == "Bearer sk-upstream-secret"
    proxy.stop()
    if not os.environ.get("UNDERSTUDY_STORE"):  # the DuckDB file's bytes (on PostgreSQL: its rows, below)
        raw = (proxy.data_dir / "understudy.duckdb").read_bytes()
        assert b"sk-upstream-secret" not in raw
    assert "sk-upstream-secret" not in json.dumps(stored_calls(proxy.data_dir), default=str)


def test_explicit_site_by_header_or_metadata(proxy, fake_upstream):
    base = {"model": "m", "messages": [{"role": "user", "content": "anything"}]}
    by_header = chat(proxy, base, headers={"x-understudy-site": "checkout-summary"})
    by_metadata = chat(proxy, {**base, "metadata": {"understudy_site": "checkout-summary", "keep": "me"}})
    plain = chat(proxy, base)
    assert by_header.headers["x-understudy-site"] == by_metadata.headers["x-understudy-site"]
    assert plain.headers["x-understudy-site"] != by_header.headers["x-understudy-site"]
    assert fake_upstream.received[1]["body"]["metadata"] == {"keep": "me"}
    assert "x-understudy-site" not in fake_upstream.received[0]["headers"]
    names = {row["name"] for row in json.loads(proxy.cli("sites", "--json").stdout)}
    assert "checkout-summary" in names


def test_models_health_metrics_and_openapi(proxy):
    assert httpx.get(proxy.url + "/v1/models").json()["data"][0]["id"] == "gpt-4o-mini"
    assert httpx.get(proxy.url + "/healthz").json()["status"] == "ok"
    chat(proxy, {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    metrics = httpx.get(proxy.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "understudy_requests_total{" in metrics.text and "understudy_recorder_queue_depth" in metrics.text
    spec = httpx.get(proxy.url + "/schema/openapi.json").json()
    operation = spec["paths"]["/v1/chat/completions"]["post"]
    assert "messages" in operation["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert "/admin/sites" not in spec["paths"]


def test_cli_reads_and_renames_while_the_proxy_runs(proxy):
    response = chat(proxy, typed_body())
    site = response.headers["x-understudy-site"]
    rows = json.loads(proxy.cli("sites", "--json").stdout)
    assert [(r["id"], r["calls"], r["valid_rate"]) for r in rows] == [(site, 1, 1.0)]
    assert {"id", "name", "calls", "state", "served_by"} <= set(rows[0])
    table = proxy.cli("sites").stdout
    assert site[:8] in table and "learning" in table
    proxy.cli("sites", "rename", site, "level-maker")
    assert json.loads(proxy.cli("sites", "--json").stdout)[0]["name"] == "level-maker"
    calls = json.loads(proxy.cli("calls", "level-maker", "--json").stdout)
    assert len(calls) == 1 and calls[0]["site_id"] == site
    missing = proxy.cli("calls", "no-such-site", check=False)
    assert missing.returncode == 1 and "no site matches" in missing.stderr
    # Admin API needs the token.
    assert httpx.get(proxy.url + "/admin/sites").status_code == 401
    # Stopped proxy: the CLI reads the file directly and the rename survived.
    proxy.stop()
    assert json.loads(proxy.cli("sites", "--json").stdout)[0]["name"] == "level-maker"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_clean_shutdown_loses_nothing(fake_upstream, isolated_data_dir, sig):
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: client.post(proxy.url + CHAT, json=body).status_code, range(300)))
    assert statuses == [200] * 300
    # uvicorn finishes its graceful stop, then re-raises the signal (the conventional exit status).
    assert proxy.stop(sig) in (0, -sig, 128 + sig)
    assert len(stored_calls(isolated_data_dir)) == 300
    assert not (isolated_data_dir / "proxy.json").exists()


def test_tagged_calls_continue_untagged_history_and_twins_split(fake_upstream, isolated_data_dir):
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "This is a task you must complete by returning only the output."},
            {"role": "user", "content": "Describe.\n\nx = ('a', '')"},
        ],
    }
    # the byLLM plugin's tags (marked as the plugin's): only they take over an untagged site's history
    tagged = lambda tag: {**body, "metadata": {"understudy_site": tag, "understudy_site_source": "plugin"}}  # noqa: E731
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        history = chat(proxy, body).headers["x-understudy-site"]
        assert chat(proxy, tagged("quiz.A.describe")).headers["x-understudy-site"] == history
        twin = chat(proxy, tagged("quiz.B.describe")).headers["x-understudy-site"]
        assert twin != history
        assert chat(proxy, body).headers["x-understudy-site"] == history  # untagged clients keep the history
    finally:
        proxy.stop()
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)  # the claims survive a restart
    try:
        assert chat(proxy, tagged("quiz.B.describe")).headers["x-understudy-site"] == twin
        assert chat(proxy, tagged("quiz.A.describe")).headers["x-understudy-site"] == history
        names = {row["id"]: (row["name"], row["calls"]) for row in json.loads(proxy.cli("sites", "--json").stdout)}
        assert names == {history: ("quiz.A.describe", 4), twin: ("quiz.B.describe", 2)}
    finally:
        proxy.stop()


def test_slow_upstream_is_a_504(fake_upstream, isolated_data_dir, monkeypatch):
    monkeypatch.setenv("UNDERSTUDY_UPSTREAM_READ_TIMEOUT_S", "0.3")
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        response = chat(proxy, {"model": "slow-2000", "messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
        assert chat(proxy, {"model": "m", "messages": [{"role": "user", "content": "x"}]}).status_code == 200
    finally:
        proxy.stop()


def test_sites_table_keeps_whole_names_at_80_columns(proxy):
    body = typed_body()
    body["messages"][1]["content"] = (
        "Create the next level of the game, a bit harder than the last.\n\ndifficulty = (4, '')"
    )
    chat(proxy, body)
    [row] = json.loads(proxy.cli("sites", "--json").stdout)
    assert len(row["name"]) > 30
    env = {**os.environ, "COLUMNS": "80"}
    out = subprocess.run(
        [str(VENV_BIN / "understudy"), "sites", "--data-dir", str(proxy.data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in out
    # the name column, folded over several lines, reads back as the whole name
    names = "".join(line.split("│")[2].strip() for line in lines if line.count("│") > 2)
    assert row["name"] in names and row["id"][:8] in out
