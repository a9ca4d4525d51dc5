"""Provider stream adjustments on the relay: Gemini's index-less tool calls, Anthropic's fences.

Unit checks on the adjuster (events split across reads, untouched bytes for untouched events),
then both through the real proxy with stand-in providers on 127.0.0.1: what the client gets and
what is recorded equal the non-streamed answer to the same request.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import start_proxy
from tests.proxy.test_providers_e2e import CONFIG  # the Claude and Gemini stand-in routes
from tests.proxy.test_proxy_server import stored_calls
from tests.support.fake_upstream import FakeUpstream
from understudy.proxy.stream_adjust import StreamAdjuster
from understudy.proxy.stream_assembly import assemble_completion

SCHEMA = {"type": "json_schema", "json_schema": {"name": "Level", "schema": {"type": "object"}}}
FENCED = '```json\n{"name": "Crypt", "difficulty": 3}\n```'
ANSWER = '{"name": "Crypt", "difficulty": 3}'


def _sse(chunks: list[dict]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def _content_chunks(text: str, size: int) -> list[dict]:
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    chunks = [
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
        for p in pieces
    ]
    return chunks + [
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    ]


def _gemini_tool_chunks() -> list[dict]:
    def call(name, args):  # Gemini: whole calls, empty id, no index
        return {"id": "", "type": "function", "function": {"name": name, "arguments": args}}

    return [
        {
            "object": "chat.completion.chunk",
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "tool_calls": [call("roll", '{"d": 6}')]},
                    "finish_reason": None,
                }
            ],
        },
        {
            "object": "chat.completion.chunk",
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [call("move", '{"x": 1}'), call("look", "{}")]},
                    "finish_reason": None,
                }
            ],
        },
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]


def _through(adjuster: StreamAdjuster, raw: bytes, read: int) -> bytes:
    out = b"".join(adjuster.feed(raw[i : i + read]) for i in range(0, len(raw), read))
    return out + adjuster.close()


@pytest.mark.parametrize("read", [1, 7, 4096])
@pytest.mark.parametrize("piece", [1, 3, 50])
def test_fences_come_off_a_streamed_json_answer(read, piece):
    raw = _sse(_content_chunks(FENCED, piece))
    out = _through(StreamAdjuster("anthropic", strip_fences=True), raw, read)
    assert assemble_completion(out)["choices"][0]["message"]["content"] == ANSWER
    # control: without a JSON request nothing changes, byte for byte
    assert _through(StreamAdjuster("anthropic", strip_fences=False), raw, read) == raw


def test_an_unfenced_answer_passes_unchanged():
    raw = _sse(_content_chunks(ANSWER + "\n", 4))
    out = _through(StreamAdjuster("anthropic", strip_fences=True), raw, 5)
    assert assemble_completion(out)["choices"][0]["message"]["content"] == ANSWER + "\n"


@pytest.mark.parametrize("read", [1, 4096])
def test_gemini_index_less_tool_calls_are_one_call_each(read):
    raw = _sse(_gemini_tool_chunks())
    # numbering by position within each chunk (the old adjustment) would give [0, 0, 1]
    out = _through(StreamAdjuster("gemini"), raw, read)
    indices = [
        call["index"]
        for event in out.split(b"\n\n")
        if event.startswith(b"data: {")
        for choice in json.loads(event[6:])["choices"]
        for call in choice["delta"].get("tool_calls", [])
    ]
    assert indices == [0, 1, 2]
    message = assemble_completion(out)["choices"][0]
    assert [c["function"]["name"] for c in message["message"]["tool_calls"]] == ["roll", "move", "look"]
    assert message["finish_reason"] == "tool_calls"
    # the recorder's reassembly of the raw stream numbers index-less calls the same way
    assert [c["function"]["name"] for c in assemble_completion(raw)["choices"][0]["message"]["tool_calls"]] == [
        "roll",
        "move",
        "look",
    ]


def test_indexed_fragments_still_merge():
    chunks = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "roll", "arguments": ""}}]},
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"d":'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"function": {"arguments": " 6}"}}]}}]},
    ]
    [call] = assemble_completion(_sse(chunks))["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "roll", "arguments": '{"d": 6}'}


def _stored_responses(data_dir) -> dict[str, dict]:
    """Stored responses by model and delivery (a stream is stored as its reassembled completion)."""
    return {
        f"{json.loads(row['request'])['model']}:{'stream' if row['stream'] else 'plain'}": json.loads(row["response"])
        for row in stored_calls(data_dir)
    }


def test_relay_applies_the_adjustments(isolated_data_dir, tmp_path, monkeypatch):
    with (
        FakeUpstream() as openai,
        FakeUpstream(reply=lambda body: FENCED, stream_chunks=lambda body: _content_chunks(FENCED, 3)) as claude,
        FakeUpstream(stream_chunks=lambda body: _gemini_tool_chunks()) as gemini,
    ):
        config = tmp_path / "upstreams.toml"
        config.write_text(CONFIG.format(claude=claude.url, gemini=gemini.url))
        monkeypatch.setenv("TEST_CLAUDE_KEY", "k1")
        monkeypatch.setenv("TEST_GEMINI_KEY", "k2")
        proxy = start_proxy(isolated_data_dir, openai.url, "--config", str(config))
        try:
            messages = [{"role": "user", "content": "Make a level."}]
            for stream in (False, True):
                body = {
                    "model": "claude-3-5-haiku-latest",
                    "messages": messages,
                    "response_format": SCHEMA,
                    "stream": stream,
                }
                response = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=30)
                assert response.status_code == 200
                message = (
                    assemble_completion(response.content)["choices"][0]["message"]
                    if stream
                    else response.json()["choices"][0]["message"]
                )
                assert message["content"] == ANSWER
            body = {
                "model": "gemini-2.0-flash",
                "messages": messages,
                "stream": True,
                "tools": [
                    {"type": "function", "function": {"name": n, "parameters": {}}} for n in ("roll", "move", "look")
                ],
            }
            response = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=30)
            choice = assemble_completion(response.content)["choices"][0]
            assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["roll", "move", "look"]
            assert choice["finish_reason"] == "tool_calls"
            assert b'"index":2' in response.content.replace(b" ", b"")
        finally:
            proxy.stop()
    stored = _stored_responses(isolated_data_dir)
    assert stored["claude-3-5-haiku-latest:stream"]["choices"][0]["message"]["content"] == ANSWER
    assert stored["claude-3-5-haiku-latest:plain"]["choices"][0]["message"]["content"] == ANSWER
    assert stored["gemini-2.0-flash:stream"]["choices"][0]["finish_reason"] == "tool_calls"
