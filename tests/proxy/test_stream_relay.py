"""The stream relay's framing, usage removal and completeness rule, and the retry waits, on real bytes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from understudy.proxy.retries import RetryPolicy, _named_wait, _retry_wait
from understudy.proxy.stream_relay import StreamWatch, usage_requested


def event(chunk: dict, end: bytes = b"\n\n") -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + end


def delta(text: str | None, finish: str | None = None, **extra) -> dict:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}],
        **extra,
    }


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_only_whole_events_go_out_whatever_the_reads():
    body = event(delta("Hel")) + event(delta("lo"), end=b"\r\n\r\n") + event(delta(None, "stop")) + b"data: [DONE]\n\n"
    for size in (1, 3, 7, len(body)):
        watch = StreamWatch()
        out = [watch.feed(body[i : i + size]) for i in range(0, len(body), size)]
        sent = [part for part in out if part]
        assert b"".join(sent) + watch.finish() == body and watch.body() == body
        # every piece handed out ends on an event boundary
        assert all(part.endswith((b"\n\n", b"\r\n\r\n")) for part in sent)
        assert watch.complete()


def test_a_cut_event_is_held_back_and_the_stream_is_not_complete():
    watch = StreamWatch()
    sent = watch.feed(event(delta("Hel")) + event(delta("lo"))[:12])
    assert sent == event(delta("Hel"))
    assert not watch.complete()
    assert watch.body().endswith(event(delta("lo"))[:12])  # recorded all the same


def test_finish_reason_on_every_choice_is_complete_without_done():
    watch = StreamWatch()
    watch.feed(event(delta("Hi")) + event(delta(None, "stop")))
    assert watch.complete()
    unfinished = StreamWatch()
    unfinished.feed(event(delta("Hi")))
    assert not unfinished.complete()


def test_usage_the_client_did_not_ask_for_is_taken_out_and_kept_in_the_record():
    body = (
        event(delta("Hi", usage=None))
        + event(delta(None, "stop", usage=None))
        + event({"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": USAGE})
        + b"data: [DONE]\n\n"
    )
    watch = StreamWatch(strip_usage=True)
    sent = watch.feed(body) + watch.finish()
    assert sent == event(delta("Hi")) + event(delta(None, "stop")) + b"data: [DONE]\n\n"
    assert b'"usage":{"prompt_tokens":3' in watch.body()
    # A provider that puts usage on a chunk with choices keeps the choices.
    mixed = StreamWatch(strip_usage=True)
    assert json.loads(mixed.feed(event(delta("Hi", "stop", usage=USAGE)))[6:]) == delta("Hi", "stop")
    # A client that asked sees the usage untouched.
    asked = StreamWatch(strip_usage=False)
    assert asked.feed(body) == body


def test_usage_is_requested_only_for_streams_that_did_not_ask():
    assert usage_requested({"model": "m", "stream": True})["stream_options"] == {"include_usage": True}
    assert usage_requested({"stream": True, "stream_options": {"x": 1}})["stream_options"] == {
        "x": 1,
        "include_usage": True,
    }
    assert usage_requested({"stream": True, "stream_options": {"include_usage": True}}) is None
    assert usage_requested({"model": "m"}) is None


POLICY = RetryPolicy(max_retries=2, backoff_s=0.5, retry_after_cap_s=30)


@pytest.mark.parametrize(
    ("status", "headers", "wait"),
    [
        (429, {"retry-after": "2"}, 2.0),
        (429, {"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        (503, {"retry-after": "in 10 s"}, 10.0),  # as an HTTP date, made when the test runs
        (429, {"retry-after": "31"}, None),  # beyond the cap: to the client
        (500, {"x-should-retry": "false"}, None),  # the upstream says no
        (400, {}, None),  # the client's own mistake
        (409, {"x-should-retry": "true"}, "backoff"),
        (502, {}, "backoff"),
    ],
)
def test_retry_waits(status, headers, wait):
    if headers.get("retry-after") == "in 10 s":
        headers = {"retry-after": format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)}
    got = _retry_wait(httpx.Response(status, headers=headers), POLICY, 0)
    if wait == "backoff":
        assert 0.25 <= got <= 0.5
    elif wait is None:
        assert got is None
    else:
        assert got == pytest.approx(wait, abs=1.5)


def test_backoff_doubles_with_jitter_and_is_capped():
    for retry, top in ((0, 0.5), (1, 1.0), (2, 2.0), (10, 8.0)):
        waits = [POLICY.backoff(retry) for _ in range(50)]
        assert all(top / 2 <= w <= top for w in waits) and len(set(waits)) > 1
    assert _named_wait(httpx.Response(429, headers={"retry-after": "soon"})) is None
