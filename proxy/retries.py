"""Bounded retries of an upstream call, and only before the client has received a byte.

An attempt is retried when it failed in a way that usually passes (the OpenAI SDK's and
LiteLLM's list): a connect timeout, a reset or refused connection, a read timeout of a stream
waiting for its first chunk (not of a plain call: that one was generating all along), a stream that ends or stalls
before its first chunk, HTTP 408 / 429 / 500 / 502 / 503 / 504 / 529. The upstream's own
`x-should-retry` header overrides the status rule either way. Once a byte has gone to the
client nothing is retried: a stream that breaks later is reported to the client (see
`proxy.stream_relay`), never silently restarted.

Waits: `backoff_s * 2**retry` (at most 8 s), with jitter (half fixed, half random) so a
crowd of clients does not retry in step. A `Retry-After` (or OpenAI's `retry-after-ms`) is
honoured instead when the upstream sends one, up to `retry_after_cap_s`; asked to wait
longer than that, the proxy gives the answer (429 / 503 and its `Retry-After`) to the client
at once rather than hold the request. So every path is bounded in time: at most
`max_retries + 1` attempts, each bounded by the connect / read (streams: stall) timeouts,
plus the waits.

For streams the first chunk is read here, inside the retry loop, before the response
starts: a stream that fails before its first chunk can still be retried, and the client's
response starts with real data.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from understudy.proxy.upstream import ConnectionBroke, ReadTimedOut, UpstreamError, UpstreamRequest, UpstreamResponse

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})  # 529: Anthropic's "overloaded"
MAX_BACKOFF_S = 8.0  # the longest computed wait between two attempts (a Retry-After may be longer, up to its cap)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    backoff_s: float
    retry_after_cap_s: float

    @classmethod
    def from_settings(cls, settings) -> RetryPolicy:
        return cls(settings.upstream_max_retries, settings.upstream_backoff_s, settings.upstream_retry_after_cap_s)

    def backoff(self, retry: int) -> float:
        """The wait before retry number `retry` (0-based) when the upstream named none."""
        wait = min(MAX_BACKOFF_S, self.backoff_s * 2**retry)
        return wait / 2 + random.uniform(0, wait / 2)


@dataclass
class Attempts:
    """How many times the upstream was asked for one call and why the earlier attempts were retried."""

    count: int = 0
    causes: list[str] = field(default_factory=list)

    def retried_for(self) -> str | None:
        return "; ".join(self.causes) or None


@dataclass
class Opened:
    """An upstream answer ready to pass on: for a 200 stream, its first chunk and the rest."""

    response: UpstreamResponse
    first_chunk: bytes | None = None
    rest: AsyncIterator[bytes] | None = None


class EmptyStream(ConnectionBroke):
    """A 200 stream that ended before its first chunk."""


async def send_with_retries(
    send: Callable[[], Awaitable[UpstreamResponse]], policy: RetryPolicy, attempts: Attempts, *, stream: bool
) -> Opened:
    """The first answer worth passing on, after at most `policy.max_retries` retries.

    Returns the last response when it is not retryable, or retryable but the retries are spent
    (or its Retry-After is beyond the cap); raises the last `UpstreamError` when no attempt
    produced a response.
    """
    while True:
        attempts.count += 1
        retries_left = attempts.count <= policy.max_retries
        try:
            response = await send()
        except UpstreamError as exc:
            # A plain call that timed out reading was accepted and generating for the whole read
            # timeout: asking again would multiply the wait (and the bill), so it is not retried.
            if not retries_left or not _transient(exc) or (isinstance(exc, ReadTimedOut) and not stream):
                raise
            attempts.causes.append(_describe(exc))
            await asyncio.sleep(policy.backoff(attempts.count - 1))
            continue
        if stream and response.status_code == 200:
            rest = response.aiter_bytes()
            try:
                first = await _first_chunk(rest)
                return Opened(response, first, rest)
            except UpstreamError as exc:
                await response.aclose()
                if not retries_left or not _transient(exc):
                    raise
                attempts.causes.append(_describe(exc))
                await asyncio.sleep(policy.backoff(attempts.count - 1))
                continue
        wait = _retry_wait(response, policy, attempts.count - 1) if retries_left else None
        if wait is None:
            return Opened(response)
        attempts.causes.append(
            f"http {response.status_code}" + (f" (retry-after {wait:g} s)" if _named_wait(response) is not None else "")
        )
        await response.aclose()
        await asyncio.sleep(wait)


async def _first_chunk(chunks: AsyncIterator[bytes]) -> bytes:
    async for chunk in chunks:
        if chunk:
            return chunk
    raise EmptyStream("upstream stream ended before its first chunk")


def _transient(exc: UpstreamError) -> bool:
    """Timeouts and broken connections pass; a URL that cannot be asked does not."""
    return exc.transient


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__


def _retry_wait(response: UpstreamResponse, policy: RetryPolicy, retry: int) -> float | None:
    """Seconds to wait before asking again, or None when this answer goes to the client."""
    should = response.headers.get("x-should-retry", "").lower()
    if should == "false" or (should != "true" and response.status_code not in RETRY_STATUSES):
        return None
    named = _named_wait(response)
    if named is None:
        return policy.backoff(retry)
    return named if named <= policy.retry_after_cap_s else None


def _named_wait(response: UpstreamResponse) -> float | None:
    """The wait the upstream asked for (`retry-after-ms`, then `Retry-After` in seconds or as a date)."""
    headers = response.headers
    try:
        if "retry-after-ms" in headers:
            return max(float(headers["retry-after-ms"]) / 1000, 0.0)
        if "retry-after" in headers:
            value = headers["retry-after"].strip()
            try:
                return max(float(value), 0.0)
            except ValueError:
                when = parsedate_to_datetime(value)
                return max((when - datetime.now(UTC)).total_seconds(), 0.0)
    except (TypeError, ValueError, OverflowError):
        return None
    return None


def with_read_timeout(request: UpstreamRequest, seconds: float) -> UpstreamRequest:
    """The request with its per-read timeout lowered to `seconds` (a stream's stall timeout)."""
    request.read_timeout_s = min(request.read_timeout_s, seconds)
    return request
