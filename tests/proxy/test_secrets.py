"""Secrets (issue 16, point 7): redaction is narrowed to credentials and reaches every place a
recorded call can surface.

The upstream key, a client key and the admin token are planted in requests (messages, a
response schema, tools, metadata), in the upstream's answers (it echoes the prompt, plain and
streamed) and in errors (an upstream 401 quoting the key it got, a route with no key). Then the
DuckDB file, its WAL, the proxy's log, the report (text, JSON, HTML), export files and every
error body are searched: 0 hits. The control: an ordinary word planted the same way is found in
each of them, so each search can find what is there.
"""

from __future__ import annotations

import json
import signal

import httpx
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import query_store, run_cli, start_proxy
from tests.support.fake_upstream import FakeUpstream

CHAT = "/v1/chat/completions"
UPSTREAM_KEY = "sk-planted-upstream-0123456789abcdef"
CONTROL = "zebracornflower"  # an ordinary word, planted beside every secret


def _echo(body: dict) -> str:
    """The upstream answers with the prompt it got (a model repeating its input)."""
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        return json.dumps({"password": "p", "note": json.dumps(body["messages"])})
    return "you said: " + json.dumps(body["messages"])


def _schema_with_password(description: str) -> dict:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "Login",
            "schema": {
                "type": "object",
                "additionalProperties": False,
                "required": ["password", "note"],
                "properties": {"password": {"type": "string", "description": description}, "note": {"type": "string"}},
            },
        },
    }


def test_a_schema_property_called_password_is_data_and_stored_as_sent(proxy, fake_upstream):
    """Training must render the prompt serving saw: a `password` / `key` / `token` property is kept."""
    response_format = _schema_with_password("the account's password")
    response_format["json_schema"]["schema"]["properties"]["key"] = {"type": "string"}
    response_format["json_schema"]["schema"]["properties"]["token"] = {"type": "integer"}
    body = {
        "model": "gpt-4o-mini",
        "response_format": response_format,
        "metadata": {"api_key": "a-label", "k": "v"},
        "messages": [{"role": "user", "content": "Make a login.\n\nsecret = ('x', '')"}],
    }
    response = httpx.post(proxy.url + CHAT, json=body, timeout=30)
    assert response.status_code == 200
    proxy.stop()
    [(stored,)] = query_store(proxy.data_dir, "SELECT request FROM calls")
    stored = json.loads(stored)
    schema = stored["response_format"]["json_schema"]["schema"]
    assert json.dumps(schema["properties"]["password"]) == json.dumps(
        response_format["json_schema"]["schema"]["properties"]["password"]
    )
    assert stored["response_format"] == response_format  # key and token too: nothing dropped
    assert stored["metadata"] == {"api_key": "a-label", "k": "v"}
    assert stored["messages"] == body["messages"]


def _planted(secrets: list[str]) -> str:
    return " ".join(f"{CONTROL} {secret} {CONTROL}" for secret in secrets)


def test_planted_secrets_are_found_nowhere(isolated_data_dir, tmp_path):
    client_key = run_cli("keys", "add", "alice", "--data-dir", str(isolated_data_dir)).stdout.strip()
    with FakeUpstream(reply=_echo) as upstream:
        proxy = start_proxy(isolated_data_dir, upstream.url, "--upstream-key", UPSTREAM_KEY)
        secrets = [UPSTREAM_KEY, client_key, proxy.admin_token]
        plant = _planted(secrets)
        auth = {"authorization": f"Bearer {client_key}"}
        errors: list[bytes] = []  # every error body the proxy answered

        def chat(body: dict, headers: dict | None = None) -> httpx.Response:
            response = httpx.post(proxy.url + CHAT, json=body, headers=headers or auth, timeout=30)
            if response.status_code >= 400:
                errors.append(response.content)
            return response

        try:
            typed = {
                "model": "gpt-4o-mini",
                "response_format": _schema_with_password(plant),
                "metadata": {"authorization": f"Bearer {client_key}", "note": plant},
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "lookup",
                            "description": plant,
                            "parameters": {"type": "object", "properties": {}},
                        },
                    }
                ],
                "messages": [
                    {"role": "system", "content": f"You log in. {plant}"},
                    {"role": "user", "content": f"Log in with {plant}"},
                ],
            }
            assert chat(typed).status_code == 200
            plain = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Repeat {plant}"}]}
            assert chat(plain).status_code == 200
            with httpx.stream(
                "POST",
                proxy.url + CHAT,
                headers=auth,
                timeout=30,
                json={**plain, "stream": True, "stream_options": {"include_usage": True}},
            ) as streamed:
                assert streamed.status_code == 200
                streamed.read()
            # errors: an upstream quoting the key it was sent, a provider with no key, a wrong client key
            echoed = chat({**plain, "model": "fail-401-echo"})
            assert echoed.status_code == 401 and "bad credentials" in echoed.text
            assert chat({**plain, "model": "claude-3-5-haiku-latest"}).status_code == 401
            assert chat(plain, headers={"authorization": f"Bearer {client_key}x"}).status_code == 401
            assert chat(plain, headers={"authorization": f"Bearer {proxy.admin_token}"}).status_code == 401
            site = chat(typed).headers["x-understudy-site"]
            plain_site = chat(plain).headers["x-understudy-site"]

            # every report form, an export outside the data dir (the CLI stages and copies) and inside
            token = {"authorization": f"Bearer {proxy.admin_token}"}
            report_text = proxy.cli("report").stdout
            report_json = proxy.cli("report", "--json").stdout
            report_html = httpx.get(proxy.url + "/report", headers=token, timeout=60).text
            site_calls = proxy.cli("calls", plain_site, "--json").stdout
            exported = tmp_path / "out" / "plain.jsonl"
            proxy.cli(
                "export",
                plain_site,
                "--unfiltered",
                "--jsonl",
                str(exported),
                "--parquet",
                str(isolated_data_dir / "plain.parquet"),
            )
            httpx.get(proxy.url + "/admin/sites", headers=token, timeout=30).raise_for_status()  # flushed
            # DuckDB checkpoints the WAL into the file at 16 MB or on close: here it holds every call
            wal_bytes = (isolated_data_dir / "understudy.duckdb.wal").read_bytes()
        finally:
            proxy.stop(signal.SIGTERM)
    db_bytes = (isolated_data_dir / "understudy.duckdb").read_bytes()
    parquet_text = json.dumps(pq.read_table(isolated_data_dir / "plain.parquet").to_pylist())

    places = {
        "store file": db_bytes.decode("latin-1"),
        "store WAL (while running)": wal_bytes.decode("latin-1"),
        "proxy log": proxy.log(),
        "report text": report_text,
        "report json": report_json,
        "report html": report_html,
        "calls --json": site_calls,
        "export jsonl": exported.read_text(),
        "export parquet": parquet_text,
        "error bodies": b"\n".join(errors).decode(),
    }
    for place, text in places.items():
        for secret in secrets:
            assert secret not in text, f"a planted secret is in the {place}"
    # control: the word planted beside each secret is found wherever content reaches (the log and
    # the aggregate reports hold none)
    for place in (
        "store file",
        "store WAL (while running)",
        "calls --json",
        "export jsonl",
        "export parquet",
        "error bodies",
    ):
        assert CONTROL in places[place], f"the control word is not in the {place}: the search proves nothing"
    assert site in report_json and site in report_html  # the reports do cover the planted site
    assert len(errors) == 4

    rows = query_store(isolated_data_dir, "SELECT request, response, error, client FROM calls")
    assert len(rows) >= 7 and {client for *_, client in rows} == {"alice"}
    stored = json.dumps(rows)
    assert stored.count("[redacted]") >= 10 and CONTROL in stored
    [request] = [json.loads(r) for r, *_ in rows if '"tools"' in r][:1]
    assert set(request["response_format"]["json_schema"]["schema"]["properties"]) == {"password", "note"}


def test_masking_takes_credentials_and_leaves_data():
    from understudy.client_keys import KEY_PREFIX
    from understudy.proxy.call_record import mask_text

    client_key = KEY_PREFIX + "A" * 43
    text = json.dumps(
        {
            "messages": [{"content": f"use {UPSTREAM_KEY} and {client_key}, thanks"}],
            "metadata": {"Authorization": "Bearer whatever", "password": "hunter2", "key": "k1"},
            "schema": {"properties": {"authorization": {"type": "string"}}},
        }
    )
    masked = json.loads(mask_text(text, (UPSTREAM_KEY,)))
    assert masked["messages"][0]["content"] == "use [redacted] and [redacted], thanks"
    assert masked["metadata"] == {"Authorization": "[redacted]", "password": "hunter2", "key": "k1"}
    assert masked["schema"] == {"properties": {"authorization": {"type": "string"}}}  # a schema property: data
    # controls: text without a credential comes back as it was, words merely starting with us- included
    plain = json.dumps({"content": "focus-group status-report us-east-1 " + "us-" + "A" * 44})
    assert mask_text(plain, (UPSTREAM_KEY,)) == plain
    quoted = 'a"secret'
    assert quoted not in json.loads(mask_text(json.dumps({"x": f"<{quoted}>"}), (quoted,)))["x"]


# Header-named fields written every way the masking regex accepts them: any ASCII case, the
# non-ASCII letters its IGNORECASE folds onto ASCII ones (the Kelvin sign, dotted and dotless i),
# other non-ASCII text around them.
_FOLDS = {"k": ["k", "K", "\u212a"], "i": ["i", "I", "\u0130", "\u0131"]}


@st.composite
def _header_field_texts(draw):
    name = draw(st.sampled_from(["authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key"]))
    spelled = "".join(draw(st.sampled_from(_FOLDS.get(ch, [ch, ch.upper()]))) for ch in name)
    around = st.text(alphabet=st.characters(codec="utf-8", exclude_characters='"\\'), max_size=20)
    return f'{draw(around)}{{"{spelled}": "{draw(around)}"}}{draw(around)}'


@settings(max_examples=400, deadline=None)
@given(_header_field_texts())
def test_the_cheap_prefilter_never_hides_a_header_field(text):
    """`mask_text` skips its header regex where `_may_name_a_header` says no: that must never be a
    text the regex matches (else a credential would be stored in clear)."""
    from understudy.proxy.call_record import _HEADER_FIELD, MASK, _may_name_a_header, mask_text

    assert _HEADER_FIELD.search(text)  # the generator writes what the regex matches
    assert _may_name_a_header(text)
    assert MASK in mask_text(text, ())


def test_the_prefilter_skips_texts_without_a_header_name():
    """The control: texts naming no header are skipped (so the test above can fail), and are
    returned untouched."""
    from understudy.proxy.call_record import _may_name_a_header, mask_text

    for text in ('{"content": "a \u2014 b", "authorisation": "x"}', '{"api_key": "x", "apikey": "y"}'):
        assert not _may_name_a_header(text)
        assert mask_text(text, ()) is text
