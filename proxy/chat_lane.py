"""POST /v1/chat/completions served straight from ASGI, in front of Litestar.

Every proxied call takes this path, and at concurrency 1 its CPU is the latency the proxy adds.
Through Litestar a third of that CPU went to the framework: route resolution, the guard's
connection copy, signature parsing, response objects and their ASGI translation
(docs/benchmarks.md has the profile). The lane does the same job in a few ASGI messages:

- the client key is checked (`proxy.access.client_name`) before the body is read;
- the body is read up to `max_body_bytes` (413 `request_too_large` beyond, counted in /metrics
  like every refusal), whether the size is announced or only streamed;
- `proxy.chat.answer_chat` answers; a `ProxyError` becomes its OpenAI error object, any other
  failure a 500 `internal_error`, as Litestar's exception handlers do for every other route;
- a streamed answer is relayed chunk by chunk while a second task waits for the client's
  disconnect, which cancels the relay (recorded as 499 by `proxy.chat._relay`).

Every other path and method goes to the Litestar application unchanged, which also declares
this operation for the OpenAPI document.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
from litestar import Litestar

from understudy.proxy.access import client_name, current_client
from understudy.proxy.chat import ChatAnswer, answer_chat
from understudy.proxy.errors import ProxyError, error_body, internal_error
from understudy.proxy.state import ProxyState

log = logging.getLogger("understudy.proxy")

CHAT_PATH = "/v1/chat/completions"


class BodyTooLarge(Exception):
    pass


class ChatLane:
    """The ASGI application `understudy serve` runs: the chat path here, the rest in `app`."""

    def __init__(self, app: Litestar):
        self.app = app
        self.proxy: ProxyState = app.state.proxy

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != CHAT_PATH:
            await self.app(scope, receive, send)
            return
        proxy = self.proxy
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            current_client.set(client_name(proxy, headers.get("authorization", "")))
            body = await _read_body(receive, headers, proxy.settings.max_body_bytes)
            if body is None:
                return  # the client went away before it finished sending
            answer = await answer_chat(proxy, body, headers)
        except BodyTooLarge:
            proxy.metrics.rejected.labels("request_too_large").inc()
            limit = proxy.settings.max_body_bytes
            answer = _error(ProxyError(413, f"request body larger than {limit} bytes", code="request_too_large"))
        except ProxyError as exc:
            answer = _error(exc)
        except Exception as exc:
            log.exception("chat completion failed")
            answer = _error(internal_error(exc))
        if isinstance(answer.body, bytes):
            await _send_whole(send, answer, answer.body)
        else:
            await _send_stream(send, receive, answer, answer.body)


async def _read_body(receive, headers: dict[str, str], limit: int) -> bytes | None:
    """The request body, or None when the client disconnected first; `BodyTooLarge` past `limit`
    (announced or streamed: a chunked body has no length to announce)."""
    announced = headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _error(exc: ProxyError) -> ChatAnswer:
    return ChatAnswer(
        exc.status, error_body(exc.message, type=exc.type, code=exc.code, param=exc.param), "application/json", {}
    )


def _start(answer: ChatAnswer, length: int | None) -> dict:
    media_type = answer.media_type
    if media_type.startswith("text/") and "charset" not in media_type:
        media_type += "; charset=utf-8"  # as Litestar labels text everywhere else
    headers = [(b"content-type", media_type.encode("latin-1"))]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    headers.extend((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers.items())
    return {"type": "http.response.start", "status": answer.status, "headers": headers}


async def _send_whole(send, answer: ChatAnswer, body: bytes) -> None:
    await send(_start(answer, len(body)))
    await send({"type": "http.response.body", "body": body})


async def _send_stream(send, receive, answer: ChatAnswer, chunks: AsyncIterator[bytes]) -> None:
    """Relay `chunks` until they end or the client disconnects (which cancels the relay; the
    generator's own cleanup then records the call)."""

    async def relay(scope: anyio.CancelScope) -> None:
        try:
            await send(_start(answer, None))
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            scope.cancel()  # the answer is over: stop waiting for a disconnect

    async def watch_disconnect(scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(watch_disconnect, group.cancel_scope)
            await relay(group.cancel_scope)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            with anyio.CancelScope(shield=True):  # a relay cut off mid-stream still records its call
                await aclose()
