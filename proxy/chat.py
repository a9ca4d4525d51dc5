"""POST /v1/chat/completions: validate, identify the call site, route, answer, record.

The handler keeps the request path short: one JSON decode (needed to validate and to
identify the site), the client's bytes forwarded as they are (re-encoded only when
Understudy's own metadata must be taken out), and the recording handed to the
recorder's queue. Streams are relayed chunk by chunk as they arrive and recorded when
they end, whether they finish, fail or the client goes away; a stream the upstream breaks
ends with an error event, never a clean end (proxy.stream_relay). Upstream faults are
retried with backoff only before the client has a byte (proxy.retries).

Routing (`routing.router`) picks who answers. A local answer that fails parsing or its
validator is never returned: the upstream answers instead and the call records why
("local fallback: ..."). When the upstream fails and the site has a local version, the
local model answers (setting `local_when_upstream_down`). Shadow comparisons run after the
response is sent, as background tasks.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
from litestar import Request, Response, post
from litestar.response import Stream

from understudy.inference.local_model import LocalAnswer, completion_object, sse_body
from understudy.pricing import answer_price
from understudy.proxy.access import current_client
from understudy.proxy.call_record import PendingCall, completion_of, first_content, mask_bytes
from understudy.proxy.callsite import UNDERSTUDY_METADATA, Identification, identify
from understudy.proxy.errors import ProxyError, error_body, is_openai_error
from understudy.proxy.openapi import ChatCompletionsOperation
from understudy.proxy.providers import UnsupportedRequest, adjust_response, needs_adjustment
from understudy.proxy.retries import Attempts, Opened, RetryPolicy, send_with_retries, with_read_timeout
from understudy.proxy.state import ProxyState
from understudy.proxy.stream_adjust import StreamAdjuster
from understudy.proxy.stream_relay import StreamWatch, error_event, usage_requested
from understudy.proxy.types import MAX_DEPTH, validation_error
from understudy.proxy.upstream import (
    ConnectFailed,
    ConnectTimedOut,
    ReadTimedOut,
    UpstreamError,
    UpstreamResponse,
    pass_back_headers,
)
from understudy.proxy.upstreams import MissingKey, Resolution
from understudy.routing.router import Plan
from understudy.store import SiteRecord

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
SITE_HEADER = "x-understudy-site"


@dataclasses.dataclass(slots=True)
class ChatAnswer:
    """What the client gets, free of any web framework: `body` is the whole answer, or the chunks
    of a stream as they come (proxy.chat_lane sends it as ASGI messages)."""

    status: int
    body: bytes | AsyncIterator[bytes]
    media_type: str
    headers: dict[str, str]


@post(
    "/v1/chat/completions",
    status_code=200,  # OpenAI answers 200, not REST's 201 for a POST
    operation_class=ChatCompletionsOperation,
    summary="Create a chat completion (OpenAI-compatible)",
    description="Forwarded to the upstream model (or answered by the site's local model) and recorded under its "
    "call site. Responses carry `X-Understudy-Site` and `X-Understudy-Served-By`.",
    tags=["OpenAI-compatible"],
)
async def chat_completions(request: Request) -> Response:
    """The operation as Litestar declares it, for the OpenAPI document. A running proxy serves
    this path in `proxy.chat_lane`, in front of Litestar (its routing, guards and response
    objects cost a third of the request's CPU); this route answers the same way when the
    Litestar application is served without the lane."""
    answer = await answer_chat(request.app.state.proxy, await request.body(), dict(request.headers))
    if isinstance(answer.body, bytes):
        return Response(answer.body, status_code=answer.status, media_type=answer.media_type, headers=answer.headers)
    return Stream(answer.body, status_code=answer.status, media_type=answer.media_type, headers=answer.headers)


async def answer_chat(proxy: ProxyState, body: bytes, client_headers: dict[str, str]) -> ChatAnswer:
    """The whole call: `body` as the client sent it, `client_headers` with lower-case names."""
    started = time.perf_counter()
    payload = _decode(body, proxy)
    ident = identify(payload, client_headers.get(SITE_HEADER))
    site, new_site_row, name_update = proxy.sites.observe(ident)
    if site.id != ident.site_id:  # a tag joined an existing site (continuity)
        ident = dataclasses.replace(ident, site_id=site.id)
    if new_site_row is not None:
        proxy.recorder.add_site(new_site_row)
        proxy.router.add_site(site.id, ident.signature.schema_name)
    if name_update is not None:
        proxy.recorder.rename_site(name_update)

    resolution = proxy.upstream.table.resolve(str(payload["model"]))
    plan = proxy.router.plan(
        site,
        has_tools=bool(ident.signature.tool_names or payload.get("tools")),
        free_upstream=resolution.route.price == (0.0, 0.0),
    )
    fallback_reason = unserved = None
    if plan.answer == "local":
        answered, fallback_reason, unserved = await _answer_locally(
            proxy, ident, site, payload, plan, started, client_headers=client_headers
        )
        if answered is not None:
            return answered
        # The upstream answers instead. A sampled drift check scores the unserved local answer
        # against it (no second upstream call is needed); in a partial site every unserved answer
        # is scored, as a shadow sample of the rest of the site.
        score_refused = (plan.also_other or plan.refused_phase is not None) and unserved is not None
        plan = dataclasses.replace(plan, also_other=score_refused, phase=plan.refused_phase or plan.phase)

    call = _pending(proxy, ident, payload, "upstream")
    call.error = fallback_reason
    if plan.answer == "local" and unserved is not None:
        call.local_tries = unserved.tries  # drawn and refused before the upstream answered
    after = _Afterwards(plan, unserved, client_headers)
    headers = {"X-Understudy-Site": site.id, "X-Understudy-Served-By": "upstream"}
    call.provider, call.upstream_model, call.price = (
        resolution.provider,
        resolution.upstream_model,
        resolution.route.price,
    )
    try:
        route_headers = resolution.headers()
        adjusted = resolution.prepare_body(payload)
    except (MissingKey, UnsupportedRequest) as exc:
        # Never forwarded, never sent to another provider: the error names provider and model.
        proxy.metrics.rejected.labels(exc.code).inc()
        call.status, call.error = exc.status, str(exc)
        call.response_body = error_body(str(exc), type="invalid_request_error", code=exc.code)
        _record(proxy, call, started)
        return ChatAnswer(exc.status, call.response_body, "application/json", headers)
    forward_body = (
        _without_understudy_fields(body, payload)
        if adjusted is None
        else _without_understudy_fields(_encoder.encode(adjusted), adjusted)
    )
    # Streams ask for the usage chunk even when the client did not (proxy.stream_relay), and
    # ask again as the client did if the upstream refuses the field.
    with_usage = usage_requested(adjusted or payload)
    bodies = (
        [forward_body]
        if with_usage is None
        else [_without_understudy_fields(_encoder.encode(with_usage), with_usage), forward_body]
    )
    try:
        opened = await _send_upstream(proxy, call, resolution, bodies, client_headers, route_headers)
    except (ConnectFailed, ConnectTimedOut) as exc:
        # Refused or never answered the connect: unreachable (502), not slow (504).
        return await _upstream_failure(
            proxy,
            call,
            site,
            started,
            headers,
            502,
            "upstream_unreachable",
            f"upstream {resolution.provider} unreachable for {resolution.upstream_model}: {exc}{_tries(call)}",
        )
    except ReadTimedOut as exc:
        return await _upstream_failure(
            proxy,
            call,
            site,
            started,
            headers,
            504,
            "upstream_timeout",
            f"upstream {resolution.provider} timed out for {resolution.upstream_model}: "
            f"{type(exc).__name__}{_tries(call)}",
        )
    except UpstreamError as exc:
        return await _upstream_failure(
            proxy,
            call,
            site,
            started,
            headers,
            502,
            "upstream_unreachable",
            f"upstream {resolution.provider} unreachable for {resolution.upstream_model}: {exc}{_tries(call)}",
        )

    upstream_response = opened.response
    call.price = answer_price(upstream_response.headers, call.price)
    headers.update(pass_back_headers(upstream_response))
    if call.stream and upstream_response.status_code == 200:
        watch = StreamWatch(StreamAdjuster.for_route(resolution.provider, payload), strip_usage=with_usage is not None)
        return ChatAnswer(
            200,
            _relay(proxy, call, opened, started, after, watch),
            upstream_response.headers.get("content-type", "text/event-stream"),
            headers,
        )
    if call.stream:
        await upstream_response.aread()
        await upstream_response.aclose()
    return _finish_plain(proxy, call, upstream_response, started, headers, after, resolution)


@dataclasses.dataclass
class _Afterwards:
    """What runs once the upstream's answer is complete: a shadow comparison, a second answer."""

    plan: Plan
    local: LocalAnswer | None  # a local answer already made (and not served) for this call
    client_headers: dict[str, str]

    def run(self, proxy: ProxyState, call: PendingCall) -> None:
        """Called once the call is complete, before it is recorded: an answer decoded here for the
        work is handed to the recorder with the call, so the writer does not decode it again."""
        if not (self.plan.also_other or self.plan.second_opinion):
            return
        if call.status != 200 or (call.error is not None and not call.error.startswith("local fallback")):
            return
        call.response_obj = completion_of(call)
        upstream_text = first_content(call.response_obj)
        proxy.router.fix_decoys(call.identification.site_id, call.identification.conversation, call.id)
        if self.plan.also_other:
            proxy.spawn(
                proxy.router.observe_pair(
                    call.identification.site_id,
                    self.plan,
                    call.id,
                    call.identification.conversation,
                    call.request,
                    upstream_text,
                    call.latency_ms,
                    self.local,
                )
            )
        if self.plan.second_opinion:
            proxy.spawn(_second_opinion(proxy, call, upstream_text, self.client_headers))


def _decode(body: bytes, proxy: ProxyState) -> dict[str, Any]:
    try:
        payload = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        proxy.metrics.rejected.labels("malformed_json").inc()
        raise ProxyError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:  # the decoder's own limit: far past MAX_DEPTH
        proxy.metrics.rejected.labels("invalid_request").inc()
        raise ProxyError(
            400,
            f"invalid chat completion request: the body nests deeper than {MAX_DEPTH} levels",
            code="invalid_request",
        ) from None
    problem = validation_error(payload, body)
    if problem is not None:
        proxy.metrics.rejected.labels("invalid_request").inc()
        raise ProxyError(400, f"invalid chat completion request: {problem}", code="invalid_request")
    return payload


def _pending(proxy: ProxyState, ident: Identification, payload: dict[str, Any], served_by: str) -> PendingCall:
    return PendingCall(
        id=proxy.recorder.new_call_id(),
        ts=time.time(),
        identification=ident,
        request=payload,
        served_by=served_by,
        stream=payload.get("stream") is True,
        status=0,
        latency_ms=0.0,
        client=current_client.get(),
    )


def _without_understudy_fields(body: bytes, payload: dict[str, Any]) -> bytes:
    """The client's bytes, unless Understudy's own metadata (`understudy_site`, its source) must be
    removed for the upstream."""
    metadata = payload.get("metadata")
    if not isinstance(metadata, dict) or not any(key in metadata for key in UNDERSTUDY_METADATA):
        return body
    rest = {k: v for k, v in metadata.items() if k not in UNDERSTUDY_METADATA}
    forwarded = {k: v for k, v in payload.items() if k != "metadata"}
    if rest:
        forwarded["metadata"] = rest
    return _encoder.encode(forwarded)


# ---- local answers ----


async def _answer_locally(
    proxy: ProxyState,
    ident: Identification,
    site: SiteRecord,
    payload: dict[str, Any],
    plan: Plan,
    started: float,
    note: str | None = None,
    client_headers: dict[str, str] | None = None,
) -> tuple[ChatAnswer | None, str | None, LocalAnswer | None]:
    """(response, None, answer) when the local answer is served; (None, why not, the answer if any) otherwise."""
    try:
        answer = await proxy.router.answer(site.id, payload, plan)
    except Exception as exc:  # a broken adapter or model must not fail the request
        reason = f"local fallback: local model failed: {type(exc).__name__}: {exc}"
        proxy.metrics.local_fallbacks.inc()
        return None, reason, None
    usable, why = proxy.router.usable(site, payload, answer, upstream_down=note is not None)  # note: upstream down
    proxy.metrics.local_tries.labels("served" if usable else "fallback").observe(answer.tries)
    if not usable:
        proxy.metrics.local_fallbacks.inc()
        return None, f"local fallback: {why}", answer
    served_by = f"local:{site.id}@v{plan.version}"
    call = _pending(proxy, ident, payload, served_by)
    completion = completion_object(answer, str(payload.get("model")))
    call.status, call.response_obj, call.error, call.provider = 200, completion, note, "local"
    call.local_tries = answer.tries
    _record(proxy, call, started)
    if plan.also_other:  # drift check: ask the upstream too, after answering
        proxy.spawn(_drift_check(proxy, call, plan, answer, client_headers or {}))
    headers = {"X-Understudy-Site": site.id, "X-Understudy-Served-By": served_by}
    if call.stream:
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        return ChatAnswer(200, sse_body(completion, include_usage), "text/event-stream", headers), None, answer
    return ChatAnswer(200, _encoder.encode(completion), "application/json", headers), None, answer


async def _extra_upstream_call(
    proxy: ProxyState, call: PendingCall, purpose: str, client_headers: dict[str, str]
) -> tuple[PendingCall, str | None]:
    """The upstream asked once more for `call`'s request (not streamed), recorded as a call of its own."""
    payload = {k: v for k, v in call.request.items() if k not in ("stream", "stream_options")}
    extra = _pending(proxy, call.identification, payload, "upstream")
    extra.stream, extra.purpose = False, purpose
    resolution = proxy.upstream.table.resolve(str(payload.get("model")))
    extra.provider, extra.upstream_model, extra.price = (
        resolution.provider,
        resolution.upstream_model,
        resolution.route.price,
    )
    started = time.perf_counter()
    try:
        adjusted = resolution.prepare_body(payload)
        body = _without_understudy_fields(_encoder.encode(adjusted or payload), adjusted or payload)
        request = proxy.upstream.build_chat_request(body, client_headers, resolution, resolution.headers())
        response = await proxy.upstream.send(request, stream=False)
    except (UpstreamError, MissingKey, UnsupportedRequest) as exc:
        extra.status, extra.error = 502, f"{purpose} call failed: {type(exc).__name__}: {exc}"
        _record(proxy, extra, started)
        return extra, None
    extra.price = answer_price(response.headers, extra.price)
    content = response.content
    if response.status_code < 400 and needs_adjustment(resolution.provider):
        content = _adjusted_response(content, resolution, payload)
    extra.status, extra.response_body = response.status_code, content
    if response.status_code >= 400:
        extra.error = f"upstream answered {response.status_code}"
    _record(proxy, extra, started)
    return extra, first_content(completion_of(extra)) if response.status_code == 200 else None


async def _drift_check(
    proxy: ProxyState, call: PendingCall, plan: Plan, local_answer: LocalAnswer, client_headers: dict[str, str]
) -> None:
    """While local, a sample of calls also goes upstream so the version keeps being judged."""
    with proxy.router.extra_upstream_slot() as granted:
        if not granted:
            return  # as many extra upstream calls in flight as allowed: this sample is skipped
        extra, upstream_text = await _extra_upstream_call(proxy, call, "drift", client_headers)
    await proxy.router.observe_pair(
        call.identification.site_id,
        plan,
        call.id,
        call.identification.conversation,
        call.request,
        upstream_text,
        extra.latency_ms,
        local_answer,
    )


async def _second_opinion(
    proxy: ProxyState, call: PendingCall, first_text: str | None, client_headers: dict[str, str]
) -> None:
    """The upstream's second answer to a request it just answered: one self-agreement sample."""
    with proxy.router.extra_upstream_slot() as granted:
        if not granted:
            return  # as many extra upstream calls in flight as allowed: this sample is skipped
        extra, second_text = await _extra_upstream_call(proxy, call, "self_check", client_headers)
    await proxy.router.observe_second_opinion(
        call.identification.site_id,
        call.id,
        extra.id,
        call.identification.conversation,
        call.request,
        first_text,
        second_text,
    )


# ---- upstream answers ----


def _finish_plain(
    proxy: ProxyState,
    call: PendingCall,
    upstream: UpstreamResponse,
    started: float,
    headers: dict[str, str],
    after: _Afterwards,
    resolution: Resolution,
) -> ChatAnswer:
    content = upstream.content
    status = upstream.status_code
    media_type = upstream.headers.get("content-type", "application/json")
    if status < 400 and needs_adjustment(resolution.provider):
        content = _adjusted_response(content, resolution, call.request)
    if status >= 400:
        proxy.metrics.upstream_errors.labels(f"http_{status}").inc()
        # An upstream may echo the credential it was sent (a 401 quoting the key): masked for the client too.
        content, media_type = mask_bytes(_as_openai_error(content, status), proxy.recorder.secrets), "application/json"
        call.error = call.error or f"upstream answered {status}{_tries(call)}"
    call.status = status
    call.response_body = content
    _record(proxy, call, started, after)
    return ChatAnswer(status, content, media_type, headers)


async def _send_upstream(
    proxy: ProxyState,
    call: PendingCall,
    resolution: Resolution,
    bodies: list[bytes],
    client_headers: dict[str, str],
    route_headers: dict[str, str],
) -> Opened:
    """The upstream's answer, retried before the first byte (proxy.retries). `bodies`: the body to
    send and, after it, one to send instead if the upstream refuses the first with 400 / 422 (a
    field the proxy added)."""
    policy = RetryPolicy.from_settings(proxy.settings)
    attempts = Attempts()
    try:
        for position, body in enumerate(bodies):
            request = proxy.upstream.build_chat_request(body, client_headers, resolution, route_headers)
            if call.stream:  # "no byte for N seconds" is the read timeout of every read of a stream
                with_read_timeout(request, proxy.settings.upstream_stall_timeout_s)
            opened = await send_with_retries(
                lambda request=request: proxy.upstream.send(request, stream=call.stream),
                policy,
                attempts,
                stream=call.stream,
            )
            refused = opened.response.status_code in (400, 422)
            if not refused or position == len(bodies) - 1:
                return opened
            attempts.causes.append(f"http {opened.response.status_code} with stream_options added; asked as sent")
            await opened.response.aclose()
        raise AssertionError("unreachable: the last body always returns")
    finally:
        call.attempts, call.retried_for = attempts.count, attempts.retried_for()
        if len(attempts.causes):
            proxy.metrics.upstream_retries.inc(len(attempts.causes))


def _tries(call: PendingCall) -> str:
    """ " after 3 attempts (...)" for an error message, when the upstream was asked more than once."""
    return f" after {call.attempts} attempts ({call.retried_for})" if call.attempts > 1 else ""


async def _relay(
    proxy: ProxyState, call: PendingCall, opened: Opened, started: float, after: _Afterwards, watch: StreamWatch
):
    """The upstream's stream to the client as it arrives, whole events at a time (proxy.stream_relay).

    A stream that breaks, stalls or ends short reaches the client as an SSE error event and
    no `[DONE]`, and is recorded as failed (502 broken or cut short, 504 stalled) with what
    arrived; a client that goes away is recorded as 499. Nothing is retried here: the client
    already has the first bytes.
    """
    call.status, call.sse = 200, True
    failure: tuple[int, str, str] | None = None
    try:
        if out := watch.feed(opened.first_chunk or b""):
            yield out
        async for chunk in opened.rest:
            if out := watch.feed(chunk):
                yield out
        rest = watch.finish()
        if watch.complete():
            if rest:
                yield rest
        else:  # a clean close mid-answer: the unterminated tail (recorded) is not passed on
            failure = (
                502,
                "upstream_stream_truncated",
                "upstream stream ended before the answer was complete (no [DONE], no finish_reason)",
            )
    except ReadTimedOut as exc:
        stall = opened.response.read_timeout_s
        failure = (
            504,
            "upstream_stream_stalled",
            f"upstream stream stalled: no byte for {stall:g} s ({type(exc).__name__})",
        )
    except UpstreamError as exc:
        failure = (502, "upstream_stream_broken", f"upstream stream broke: {type(exc).__name__}: {exc}".rstrip(": "))
    except Exception as exc:  # a fault of the proxy's own while relaying: still an honest end
        failure = (502, "stream_relay_failed", f"proxy failed relaying the stream: {type(exc).__name__}: {exc}")
    except BaseException:  # the client went away (cancelled, or the response closed): record what was relayed
        call.status = 499
        call.error = "client disconnected" if call.error is None else f"{call.error}; client disconnected"
        raise
    finally:
        if failure is not None:
            call.status = failure[0]
            call.error = failure[2] if call.error is None else f"{call.error}; {failure[2]}"
        call.response_body = watch.body()
        _record(proxy, call, started, after)
        with anyio.CancelScope(shield=True):  # a cancelled request still hands its connection back
            await opened.response.aclose()
    if failure is not None:
        proxy.metrics.upstream_errors.labels(failure[1]).inc()
        yield error_event(failure[2], failure[1])


async def _upstream_failure(
    proxy: ProxyState,
    call: PendingCall,
    site: SiteRecord,
    started: float,
    headers: dict[str, str],
    status: int,
    code: str,
    message: str,
) -> ChatAnswer:
    proxy.metrics.upstream_errors.labels(code).inc()
    fallback = proxy.router.fallback_plan(site) if proxy.settings.local_when_upstream_down else None
    if fallback is not None:
        answered, _, _ = await _answer_locally(
            proxy,
            call.identification,
            site,
            call.request,
            fallback,
            started,
            note=f"upstream down ({message}); local answered",
        )
        if answered is not None:
            return answered
    body = mask_bytes(error_body(message, type="upstream_error", code=code), proxy.recorder.secrets)
    call.status, call.error, call.response_body = status, message, body
    _record(proxy, call, started)
    return ChatAnswer(status, body, "application/json", headers)


def _adjusted_response(content: bytes, resolution: Resolution, request: dict[str, Any]) -> bytes:
    """A provider's reply with its known OpenAI-compatibility gaps closed (proxy.providers)."""
    try:
        decoded = _decoder.decode(content)
    except msgspec.DecodeError:
        return content
    adjusted = adjust_response(resolution.provider, decoded, request=request)
    return content if adjusted is decoded else _encoder.encode(adjusted)


def _as_openai_error(content: bytes, status: int) -> bytes:
    """Upstream error bodies pass through when already OpenAI-shaped, else get wrapped."""
    try:
        if is_openai_error(_decoder.decode(content)):
            return content
    except msgspec.DecodeError:
        pass
    text = content[:500].decode("utf-8", "replace").strip() or f"HTTP {status}"
    return error_body(f"upstream error: {text}", type="upstream_error", code=f"upstream_http_{status}")


def _record(proxy: ProxyState, call: PendingCall, started: float, after: _Afterwards | None = None) -> None:
    """Hand the finished call to the recorder (its latency measured now); `after`: the follow-up
    work on the answer, started first so that what it decodes travels with the call."""
    elapsed = time.perf_counter() - started
    call.latency_ms = elapsed * 1000
    if after is not None:
        after.run(proxy, call)
    proxy.recorder.record(call)
    proxy.metrics.observe(call.identification.site_id, call.served_by, call.status, elapsed)
