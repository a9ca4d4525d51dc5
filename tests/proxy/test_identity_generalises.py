"""Call-site identity on programs written for these tests (issue: identity that generalises).

Two classes that used to split one site:
(a) a byLLM tool loop whose later step offers fewer tools than its first (byLLM narrows the
    list to `finish_tool` on the last iteration), in both byLLM versions' request shapes;
(b) a plain OpenAI app whose user text contains `name = value` lines.
Both through the real proxy, and across a proxy restart for (a).
"""

from __future__ import annotations

import json

import httpx

from tests.conftest import start_proxy
from understudy.proxy.callsite import identify

CHAT = "/v1/chat/completions"
BYLLM_SYSTEM = (
    "This is a task you must complete by returning only the output.\n"
    "Do not include any other text. Use the tools when needed."
)


def _tool(name: str) -> dict:
    return {
        "type": "function",
        "function": {"name": name, "description": name, "parameters": {"type": "object", "properties": {}}},
    }


def _byllm_first_turn(city: str, version: str) -> dict:
    # 0.4 sends the argument block in one text; 0.6 adds a "Schema requirements" part
    text = f"Plan a trip to the city.\n\ncity = ('{city}', 'where to go')"
    content = (
        text
        if version == "0.4"
        else [{"type": "text", "text": text}, {"type": "text", "text": "Schema requirements: a string"}]
    )
    return {
        "model": "gpt-4o-mini",
        "temperature": 0.7,
        "messages": [{"role": "system", "content": BYLLM_SYSTEM}, {"role": "user", "content": content}],
        "tools": [_tool("get_weather"), _tool("find_hotels"), _tool("finish_tool")],
    }


def _tool_step(first: dict, tools: list[str]) -> dict:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    return {
        **first,
        "tools": [_tool(name) for name in tools],
        "messages": first["messages"]
        + [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    }


def _site(proxy, body) -> str:
    response = httpx.post(proxy.url + CHAT, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.headers["x-understudy-site"]


def test_a_narrowed_tool_step_stays_on_its_first_turns_site(fake_upstream, isolated_data_dir):
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        for version in ("0.4", "0.6"):
            first = _byllm_first_turn(f"Lisbon {version}", version)
            site = _site(proxy, first)
            assert _site(proxy, _tool_step(first, ["get_weather", "find_hotels", "finish_tool"])) == site
            assert _site(proxy, _tool_step(first, ["finish_tool"])) == site
            # control: the narrowed request on its own is another signature
            assert identify(_tool_step(first, ["finish_tool"])).site_id != site
        # a different first turn of the same function starts its own conversation on the same site
        other = _byllm_first_turn("Porto", "0.6")
        assert _site(proxy, other) == _site(proxy, _byllm_first_turn("Lisbon 0.6", "0.6"))
        pending = _byllm_first_turn("Madrid", "0.6")
        site = _site(proxy, pending)
    finally:
        proxy.stop()
    # the conversation is remembered across a restart: its last step joins the first turn's site
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        assert _site(proxy, _tool_step(pending, ["finish_tool"])) == site
    finally:
        proxy.stop()


def _plain_app(text: str) -> dict:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You extract settings from a config file."},
            {"role": "user", "content": text},
        ],
    }


def test_name_value_lines_in_a_plain_apps_text_are_content(proxy):
    texts = [
        "Read this file.\n\nport = 8080\nhost = 'example.org'",
        "Read this file.\n\ntimeout = 30",
        "Parse:\n\nuser = ('alice', 'x')\nretries = 3\nverbose = True",
        "Read this file.\n\nport = (8080, '')\nhost = ('example.org', '')",
    ]  # even byLLM's own line form
    sites = {_site(proxy, _plain_app(text)) for text in texts}
    assert len(sites) == 1
    assert all(identify(_plain_app(t)).signature.kind == "generic" for t in texts)
    assert identify(_plain_app(texts[3])).signature.arg_names == ()
    # control: with byLLM's system text the same lines are argument lines (names are structure)
    byllm = {
        **_plain_app(texts[0]),
        "messages": [{"role": "system", "content": BYLLM_SYSTEM}, {"role": "user", "content": texts[3]}],
    }
    assert identify(byllm).signature.arg_names == ("port", "host")
    assert json.dumps(identify(byllm).signature.kind) == '"byllm"'
