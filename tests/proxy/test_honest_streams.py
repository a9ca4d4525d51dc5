"""Honest streams (issue 16, point 2), against a real proxy process and a fake upstream that
breaks, truncates and stalls streams on command.

A stream the upstream breaks reaches the client as an SSE error event without `[DONE]` and
is stored as failed with what arrived; a client that goes away is recorded as 499; such
calls never become training examples. Every stream records tokens and cost: the upstream's
own usage (the proxy asks for it and hides it from a client that did not), else an estimate
marked as such.
"""

from __future__ import annotations

import json
import os
import time

import httpx
import openai
import pytest

from tests.conftest import query_store, run_cli, start_proxy

MESSAGES = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Say something."}]
ROW = (
    "SELECT model, stream, status, error, response, prompt_tokens, completion_tokens, cost_usd, usage_estimated, "
    "attempts FROM calls ORDER BY ts, id"
)


@pytest.fixture
def start(fake_upstream, isolated_data_dir, tmp_path):
    """A proxy on the fake upstream with short fault settings; fault models are priced like gpt-4o-mini."""
    prices = tmp_path / "prices.toml"
    prices.write_text(
        "".join(
            f'[prices."{name}"]\ninput = 0.15\noutput = 0.60\n'
            for name in ("break-after", "truncate-after", "stall-after", "no-usage")
        )
    )
    running = []

    def _start(**settings: str):
        env = {
            **os.environ,
            "UNDERSTUDY_PRICES_FILE": str(prices),
            "UNDERSTUDY_UPSTREAM_BACKOFF_S": "0.05",
            "UNDERSTUDY_UPSTREAM_STALL_TIMEOUT_S": "1",
            **settings,
        }
        running.append(start_proxy(isolated_data_dir, fake_upstream.url, env=env))
        return running[-1]

    yield _start
    for proxy in running:
        proxy.stop()


def rows(proxy) -> list[dict]:
    proxy.stop()
    names = [c.strip().split()[-1] for c in ROW.removeprefix("SELECT ").split(" FROM ")[0].split(",")]
    return [dict(zip(names, row)) for row in query_store(proxy.data_dir, ROW)]


def stream(proxy, model: str, messages=MESSAGES, **extra) -> bytes:
    with httpx.stream(
        "POST",
        proxy.url + "/v1/chat/completions",
        timeout=30,
        json={"model": model, "messages": messages, "stream": True, **extra},
    ) as response:
        assert response.status_code == 200, response.read()
        return b"".join(response.iter_bytes())


def events(raw: bytes) -> list:
    return [
        json.loads(line[6:]) if line != b"data: [DONE]" else "[DONE]"
        for line in raw.splitlines()
        if line.startswith(b"data: ")
    ]


def content(raw: bytes) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events(raw) if isinstance(e, dict) and e.get("choices")
    )


def test_healthy_stream_ends_with_done_and_records_the_upstreams_usage(start, fake_upstream):
    proxy = start()
    raw = stream(proxy, "gpt-4o-mini")
    asked = stream(proxy, "gpt-4o-mini", stream_options={"include_usage": True})
    # The client that did not ask sees no usage at all; the one that asked gets the usage chunk.
    assert events(raw)[-1] == "[DONE]" and b'"usage"' not in raw and b'"error"' not in raw
    assert content(raw) == "echo of 2 messages"
    assert [e["usage"] for e in events(asked)[:-1] if e.get("usage")] == [
        {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    ]
    # ... because the proxy asked the upstream for it.
    assert [r["body"].get("stream_options") for r in fake_upstream.received] == [{"include_usage": True}] * 2
    first, second = rows(proxy)
    for row in (first, second):
        assert (row["status"], row["error"], row["prompt_tokens"], row["completion_tokens"]) == (200, None, 11, 7)
        assert row["usage_estimated"] is False and row["attempts"] == 1
        assert json.loads(row["response"])["choices"][0]["finish_reason"] == "stop"


def test_the_same_answer_streamed_and_not_records_the_same_tokens_and_cost(start):
    proxy = start()
    plain = httpx.post(
        proxy.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES}, timeout=30
    )
    assert plain.status_code == 200
    streamed = stream(proxy, "gpt-4o-mini")
    assert content(streamed) == plain.json()["choices"][0]["message"]["content"]
    not_streamed, was_streamed = rows(proxy)
    assert (not_streamed["stream"], was_streamed["stream"]) == (False, True)
    for column in ("prompt_tokens", "completion_tokens", "cost_usd", "usage_estimated"):
        assert not_streamed[column] == was_streamed[column], column
    assert was_streamed["cost_usd"] == pytest.approx((11 * 0.15 + 7 * 0.60) / 1e6)


def test_an_upstream_ignoring_stream_options_gets_estimated_tokens_marked_so(start):
    proxy = start()
    raw = stream(proxy, "no-usage")
    assert events(raw)[-1] == "[DONE]"
    (row,) = rows(proxy)
    assert row["status"] == 200 and row["usage_estimated"] is True
    # "You answer briefly." + "Say something." = 33 characters, about 9 tokens, + 3 per message
    # and 3 for the reply; "echo of 2 messages" = 18 characters, about 5 tokens.
    assert (row["prompt_tokens"], row["completion_tokens"]) == (9 + 9, 5)
    assert row["cost_usd"] == pytest.approx((18 * 0.15 + 5 * 0.60) / 1e6)


def test_a_stream_the_upstream_breaks_is_an_error_event_and_a_failed_row(start, fake_upstream):
    proxy = start()
    raw = stream(proxy, "break-after-2")
    got = events(raw)
    assert "[DONE]" not in got
    assert content(raw) == "echo of 2 "  # the two chunks that arrived, whole
    error = got[-1]["error"]
    assert error["code"] == "upstream_stream_broken" and error["type"] == "upstream_error"
    assert set(error) == {"message", "type", "param", "code"}
    assert len(fake_upstream.received) == 1  # nothing is retried once the client has bytes
    (row,) = rows(proxy)
    assert row["status"] == 502 and row["error"].startswith("upstream stream broke")
    response = json.loads(row["response"])  # what arrived, reassembled
    assert response["choices"][0]["message"]["content"] == "echo of 2 "
    assert response["choices"][0]["finish_reason"] is None
    assert row["usage_estimated"] is True and row["completion_tokens"] == 3 and row["cost_usd"] > 0


def test_the_openai_sdk_raises_on_a_broken_stream_and_not_on_a_healthy_one(start):
    proxy = start()
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0)
    text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        if chunk.choices
    )
    assert text == "echo of 2 messages"
    received = []
    with pytest.raises(openai.APIError, match="upstream stream broke"):
        for chunk in client.chat.completions.create(model="break-after-2", messages=MESSAGES, stream=True):
            received.append(chunk.choices[0].delta.content)
    assert "".join(received) == "echo of 2 "


def test_a_stream_that_ends_without_done_or_finish_is_truncated(start):
    proxy = start()
    raw = stream(proxy, "truncate-after-2")
    got = events(raw)
    assert "[DONE]" not in got and got[-1]["error"]["code"] == "upstream_stream_truncated"
    (row,) = rows(proxy)
    assert row["status"] == 502 and "ended before the answer was complete" in row["error"]


def test_a_stalled_stream_ends_with_an_error_after_the_stall_timeout(start, fake_upstream):
    proxy = start(UNDERSTUDY_UPSTREAM_STALL_TIMEOUT_S="1")
    began = time.monotonic()
    raw = stream(proxy, "stall-after-2")
    assert 1 <= time.monotonic() - began < 10
    got = events(raw)
    assert content(raw) == "echo of 2 " and "[DONE]" not in got
    assert got[-1]["error"]["code"] == "upstream_stream_stalled"
    assert len(fake_upstream.received) == 1
    (row,) = rows(proxy)
    assert row["status"] == 504 and "no byte for 1 s" in row["error"]


def test_a_client_that_goes_away_mid_stream_is_recorded_as_disconnected(start):
    proxy = start(UNDERSTUDY_UPSTREAM_STALL_TIMEOUT_S="60")
    with httpx.stream(
        "POST",
        proxy.url + "/v1/chat/completions",
        timeout=30,
        json={"model": "stall-after-2", "messages": MESSAGES, "stream": True},
    ) as response:
        first = next(response.iter_bytes())
        assert first.startswith(b"data: ")
    time.sleep(1)  # the proxy notices the closed connection
    (row,) = rows(proxy)
    assert row["status"] == 499 and row["error"] == "client disconnected"
    assert json.loads(row["response"])["choices"][0]["message"]["content"].startswith("echo")


def test_failed_and_cut_off_answers_never_become_training_examples(start, isolated_data_dir):
    proxy = start()
    site = {"X-Understudy-Site": "honest-site"}

    def ask(model: str, n: int, streamed: bool) -> None:
        messages = [{"role": "user", "content": f"question {n}"}]
        body = {"model": model, "messages": messages, "stream": streamed}
        with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=body, headers=site, timeout=30) as r:
            r.read()

    ask("gpt-4o-mini", 1, streamed=True)  # complete: kept
    ask("gpt-4o-mini", 2, streamed=False)  # complete: kept
    ask("break-after-2", 3, streamed=True)  # broken stream: failed row
    ask("truncate-after-2", 4, streamed=True)
    ask("finish-length", 5, streamed=False)  # 200, but cut off by max_tokens
    ask("finish-length", 6, streamed=True)
    proxy.stop()
    statuses = sorted(row[0] for row in query_store(isolated_data_dir, "SELECT status FROM calls"))
    assert statuses == [200, 200, 200, 200, 502, 502]
    out = isolated_data_dir / "exports" / "honest.jsonl"
    for filtered in ("--filtered", "--unfiltered"):
        result = json.loads(
            run_cli("export", "honest-site", "--jsonl", str(out), filtered, "--data-dir", str(isolated_data_dir)).stdout
        )
        assert (result["considered"], result["kept"]) == (2, 2)
        prompts = sorted(json.loads(line)["messages"][0]["content"] for line in out.read_text().splitlines())
        assert prompts == ["question 1", "question 2"]
