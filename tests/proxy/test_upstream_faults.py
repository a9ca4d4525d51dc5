"""Upstream faults (issue 16, point 4), against a real proxy process and a fake upstream that
resets, rate-limits, fails and stalls on command.

Retries with backoff happen only before the client has a byte, a Retry-After is honoured up
to its cap, every path ends in bounded time with an OpenAI-style error, and every outcome is
recorded with its cause (attempts, why they were retried, the last status).
"""

from __future__ import annotations

import os
import time

import httpx
import pytest

from tests.conftest import query_store, start_proxy

MESSAGES = [{"role": "user", "content": "Say something."}]
ROW = "SELECT model, stream, status, error, attempts, retried_for FROM calls ORDER BY ts, id"


@pytest.fixture
def start(fake_upstream, isolated_data_dir):
    running = []

    def _start(**settings: str):
        env = {
            **os.environ,
            "UNDERSTUDY_UPSTREAM_BACKOFF_S": "0.05",
            "UNDERSTUDY_UPSTREAM_STALL_TIMEOUT_S": "1",
            **settings,
        }
        running.append(start_proxy(isolated_data_dir, fake_upstream.url, env=env))
        return running[-1]

    yield _start
    for proxy in running:
        proxy.stop()


def ask(proxy, model: str, **extra) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    response = httpx.post(
        proxy.url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES, **extra}, timeout=60
    )
    return response, time.monotonic() - began


def rows(proxy) -> list[dict]:
    proxy.stop()
    names = ("model", "stream", "status", "error", "attempts", "retried_for")
    return [dict(zip(names, row)) for row in query_store(proxy.data_dir, ROW)]


def openai_error(response: httpx.Response) -> dict:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_a_429_that_clears_within_the_retries_succeeds_after_its_retry_after(start, fake_upstream):
    proxy = start()
    response, took = ask(proxy, "rate-limit-2")
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"].startswith("echo")
    assert took >= 2  # Retry-After: 1, twice
    assert len(fake_upstream.received) == 3
    (row,) = rows(proxy)
    assert (row["status"], row["error"], row["attempts"]) == (200, None, 3)
    assert row["retried_for"] == "http 429 (retry-after 1 s); http 429 (retry-after 1 s)"


def test_a_429_that_outlasts_the_retries_goes_to_the_client_with_its_retry_after(start, fake_upstream):
    proxy = start()
    response, _ = ask(proxy, "rate-limit-5")
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert openai_error(response)["code"] == "rate_limit_exceeded"  # the upstream's own error body
    assert len(fake_upstream.received) == 3
    (row,) = rows(proxy)
    assert row["status"] == 429 and row["attempts"] == 3
    assert row["error"].startswith("upstream answered 429 after 3 attempts (http 429")


def test_a_retry_after_beyond_the_cap_is_not_waited_for(start, fake_upstream):
    proxy = start(UNDERSTUDY_UPSTREAM_RETRY_AFTER_CAP_S="5")
    response, took = ask(proxy, "rate-limit-1-120")
    assert response.status_code == 429 and response.headers["retry-after"] == "120" and took < 5
    assert len(fake_upstream.received) == 1
    (row,) = rows(proxy)
    assert (row["status"], row["attempts"], row["error"]) == (429, 1, "upstream answered 429")


def test_retries_off_passes_the_first_429_through(start, fake_upstream):
    proxy = start(UNDERSTUDY_UPSTREAM_MAX_RETRIES="0")
    response, _ = ask(proxy, "rate-limit-1")
    assert response.status_code == 429 and len(fake_upstream.received) == 1


def test_a_5xx_is_retried_and_one_that_persists_is_passed_on(start, fake_upstream):
    proxy = start()
    passing, _ = ask(proxy, "flaky-500-1")
    failing, _ = ask(proxy, "flaky-500-9")
    assert passing.status_code == 200
    assert failing.status_code == 500 and openai_error(failing)["message"] == "flaky"
    assert len(fake_upstream.received) == 2 + 3
    passed, failed = rows(proxy)
    assert (passed["status"], passed["attempts"], passed["retried_for"]) == (200, 2, "http 500")
    assert (failed["status"], failed["attempts"]) == (500, 3)
    assert failed["error"] == "upstream answered 500 after 3 attempts (http 500; http 500)"


def test_a_4xx_is_not_retried_and_a_plain_text_503_is(start, fake_upstream):
    proxy = start()
    refused, _ = ask(proxy, "fail-400")
    assert refused.status_code == 400 and openai_error(refused)["message"] == "bad request"
    assert len(fake_upstream.received) == 1
    unavailable, _ = ask(proxy, "fail-text")
    assert unavailable.status_code == 503 and openai_error(unavailable)["code"] == "upstream_http_503"
    assert len(fake_upstream.received) == 1 + 3
    refused_row, unavailable_row = rows(proxy)
    assert (refused_row["status"], refused_row["attempts"], refused_row["error"]) == (400, 1, "upstream answered 400")
    assert (unavailable_row["status"], unavailable_row["attempts"]) == (503, 3)


def test_an_upstream_refusing_the_added_stream_options_is_asked_as_the_client_asked(start, fake_upstream):
    proxy = start()
    for model in ("refuse-stream-options", "fail-400"):
        with httpx.stream(
            "POST",
            proxy.url + "/v1/chat/completions",
            timeout=30,
            json={"model": model, "messages": MESSAGES, "stream": True},
        ) as response:
            body = response.read()
            assert response.status_code == (200 if model == "refuse-stream-options" else 400), body
    # Each was asked with the usage option, then exactly as the client sent it.
    assert [("stream_options" in r["body"], r["body"]["model"]) for r in fake_upstream.received] == [
        (True, "refuse-stream-options"),
        (False, "refuse-stream-options"),
        (True, "fail-400"),
        (False, "fail-400"),
    ]
    answered, refused = rows(proxy)
    assert (answered["status"], answered["attempts"], answered["error"]) == (200, 2, None)
    assert answered["retried_for"] == "http 400 with stream_options added; asked as sent"
    assert (refused["status"], refused["attempts"]) == (400, 2)
    stored = query_store(proxy.data_dir, "SELECT usage_estimated FROM calls WHERE status = 200")
    assert stored == [(True,)]  # no usage came: counted from the text


def test_a_reset_connection_is_retried_then_reported(start, fake_upstream):
    proxy = start()
    response, took = ask(proxy, "reset")
    assert response.status_code == 502 and took < 10
    error = openai_error(response)
    assert error["code"] == "upstream_unreachable" and "after 3 attempts" in error["message"]
    assert len(fake_upstream.received) == 3
    (row,) = rows(proxy)
    assert row["status"] == 502 and row["attempts"] == 3 and "after 3 attempts" in row["error"]


def test_a_read_timeout_is_a_504_without_retries_and_a_fast_answer_is_not(start, fake_upstream):
    """A plain call that timed out reading had the upstream generating all along: asking again
    would multiply the wait and the bill, so it goes to the client at once."""
    proxy = start(UNDERSTUDY_UPSTREAM_READ_TIMEOUT_S="0.5")
    slow, took = ask(proxy, "slow-3000")
    fast, _ = ask(proxy, "slow-100")
    assert slow.status_code == 504 and openai_error(slow)["code"] == "upstream_timeout" and took < 3
    assert fast.status_code == 200
    timed_out, answered = rows(proxy)
    assert (timed_out["status"], timed_out["attempts"], timed_out["retried_for"]) == (504, 1, None)
    assert (answered["status"], answered["attempts"], answered["retried_for"]) == (200, 1, None)
    assert len([r for r in fake_upstream.received if r["body"]["model"] == "slow-3000"]) == 1


def test_a_stream_that_stalls_before_its_first_byte_is_retried_then_a_json_error(start, fake_upstream):
    proxy = start(UNDERSTUDY_UPSTREAM_STALL_TIMEOUT_S="0.5")
    began = time.monotonic()
    response = httpx.post(
        proxy.url + "/v1/chat/completions",
        timeout=30,
        json={"model": "stall-after-0", "messages": MESSAGES, "stream": True},
    )
    assert time.monotonic() - began < 10
    # Nothing had been sent, so the client gets a plain error response, not a broken stream.
    assert response.status_code == 504 and openai_error(response)["code"] == "upstream_timeout"
    assert len(fake_upstream.received) == 3
    (row,) = rows(proxy)
    assert (row["stream"], row["status"], row["attempts"]) == (True, 504, 3)


def test_a_stream_that_fails_after_its_first_byte_is_not_retried(start, fake_upstream):
    proxy = start()
    for model in ("break-after-1", "stall-after-1"):
        with httpx.stream(
            "POST",
            proxy.url + "/v1/chat/completions",
            timeout=30,
            json={"model": model, "messages": MESSAGES, "stream": True},
        ) as response:
            assert response.status_code == 200 and b'"error"' in response.read()
    assert [r["body"]["model"] for r in fake_upstream.received] == ["break-after-1", "stall-after-1"]
    broken, stalled = rows(proxy)
    assert (broken["status"], broken["attempts"], stalled["status"], stalled["attempts"]) == (502, 1, 504, 1)
