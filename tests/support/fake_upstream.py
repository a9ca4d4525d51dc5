"""A real OpenAI-wire-format server for tests: raw ASGI under uvicorn on 127.0.0.1.

Behaviour is chosen by the request's `model`:
- anything else: a completion; typed requests (json_schema) get a valid instance of their
  schema, others an echo of how many messages arrived (or whatever `reply` returns);
- `fail-500`: an OpenAI-shaped 500; `fail-text`: a plain-text 503; `slow-<ms>`: waits first;
  `fail-401-echo`: a 401 quoting the Authorization header and the last message it got (as
  careless servers do).
Faults, for the proxy's retries and honest streams (attempts are counted per distinct
model and messages, so a request sent again continues the count):
- `reset`: the connection is dropped (TCP reset) before any response;
- `rate-limit-<k>[-<s>]`: 429 with `Retry-After: <s>` (default 1) for the first k attempts, then 200;
- `flaky-500-<k>`: an OpenAI-shaped 500 for the first k attempts, then 200;
- `break-after-<n>`: a stream of n chunks, then the connection is reset;
- `truncate-after-<n>`: a stream of n chunks, then a clean end without finish_reason or [DONE];
- `stall-after-<n>`: a stream of n chunks, then nothing (until the server stops);
- `no-usage`: a stream without usage even when asked (an upstream that ignores stream_options);
- `finish-length`: the answer ends with finish_reason `length` (cut off by max_tokens);
- `fail-400`: an OpenAI-shaped 400; `refuse-stream-options`: a 400 for requests carrying
  `stream_options` (a strict server), answered normally without.
`stream: true` is answered as SSE chunks (with a usage chunk when asked). Every request
is kept in `received` (headers and decoded body) for assertions.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn


def default_reply(body: dict[str, Any]) -> str:
    """Typed requests get an instance of their JSON schema; others an echo."""
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        return json.dumps(instance_of(schema, schema.get("$defs", {})))
    return f"echo of {len(body.get('messages', []))} messages"


def instance_of(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """A small valid value for a JSON schema (the shapes byLLM sends)."""
    if "$ref" in schema:
        return instance_of(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return instance_of(schema[key][0], defs)
    kind = schema.get("type")
    if kind == "object":
        return {name: instance_of(sub, defs) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [instance_of(schema.get("items") or {"type": "string"}, defs)]
    return {"integer": 3, "number": 1.5, "boolean": True, "null": None}.get(kind, "text")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeUpstream:
    def __init__(
        self,
        reply: Callable[[dict[str, Any]], str] | None = None,
        stream_chunks: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    ):
        self.received: list[dict[str, Any]] = []
        self.attempts: dict[str, int] = {}  # per model + messages: how many times it was asked
        self.reply = reply or default_reply
        self.stream_chunks = stream_chunks  # streamed requests get exactly these chunks (a provider's own shapes)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=self.port,
                log_level="error",
                access_log=False,
                lifespan="off",
                interface="asgi3",
            )
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(5)

    async def app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        path = scope["path"]
        if path.endswith("/models"):
            await _send(send, 200, {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})
            return
        payload = json.loads(body) if body else {}
        self.received.append({"path": path, "headers": headers, "body": payload})
        model = payload.get("model", "")
        if model == "fail-401-echo":
            said = (payload.get("messages") or [{}])[-1].get("content")
            await _send(
                send,
                401,
                {
                    "error": {
                        "message": f"bad credentials: {headers.get('authorization', '')} for {said}",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
            )
            return
        if model.startswith("slow-"):
            await asyncio.sleep(int(model.split("-")[1]) / 1000)
        if model == "fail-500":
            await _send(
                send,
                500,
                {"error": {"message": "upstream exploded", "type": "server_error", "param": None, "code": None}},
            )
            return
        if model == "fail-text":
            await _send_raw(send, 503, b"service unavailable", b"text/plain")
            return
        key = model + json.dumps(payload.get("messages"), sort_keys=True)
        attempt = self.attempts[key] = self.attempts.get(key, 0) + 1
        if model == "reset":
            _drop_connection(send)
            return
        if model.startswith("rate-limit-"):
            k, _, wait = model.removeprefix("rate-limit-").partition("-")
            if attempt <= int(k):
                await _send(
                    send,
                    429,
                    {
                        "error": {
                            "message": "rate limited",
                            "type": "requests",
                            "param": None,
                            "code": "rate_limit_exceeded",
                        }
                    },
                    [(b"retry-after", (wait or "1").encode())],
                )
                return
        if model == "fail-400" or (model == "refuse-stream-options" and "stream_options" in payload):
            await _send(
                send,
                400,
                {"error": {"message": "bad request", "type": "invalid_request_error", "param": None, "code": None}},
            )
            return
        if model.startswith("flaky-500-") and attempt <= int(model.removeprefix("flaky-500-")):
            await _send(send, 500, {"error": {"message": "flaky", "type": "server_error", "param": None, "code": None}})
            return
        content = self.reply(payload)
        usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        if payload.get("stream") and self.stream_chunks is not None:
            await _send_raw(
                send,
                200,
                "".join(f"data: {json.dumps(c)}\n\n" for c in self.stream_chunks(payload)).encode()
                + b"data: [DONE]\n\n",
                b"text/event-stream",
            )
            return
        if payload.get("stream"):
            asked = (payload.get("stream_options") or {}).get("include_usage") and model != "no-usage"
            await self._stream(send, model, content, usage if asked else None)
            return
        await _send(
            send,
            200,
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "length" if model == "finish-length" else "stop",
                    }
                ],
                "usage": usage,
            },
        )

    async def _stream(self, send, model: str, content: str, usage: dict | None) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        pieces = [content[i : i + 5] for i in range(0, len(content), 5)] or [""]
        fault, _, n = model.rpartition("-after-")
        if fault in ("break", "truncate", "stall"):
            pieces = pieces[: int(n)]
        first = True
        for piece in pieces:
            delta = {"role": "assistant", "content": piece} if first else {"content": piece}
            first = False
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            await send(
                {"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(), "more_body": True}
            )
            await asyncio.sleep(0.002)
        if fault == "break":
            await asyncio.sleep(0.05)  # the chunks reach the proxy before the reset
            _drop_connection(send)
            return
        if fault == "truncate":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if fault == "stall":
            deadline = time.monotonic() + 60
            while not self._server.should_exit and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return
        final = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "length" if model == "finish-length" else "stop"}],
        }
        tail = f"data: {json.dumps(final)}\n\n"
        if usage:
            tail += f"data: {json.dumps({'id': 'chatcmpl-fake', 'object': 'chat.completion.chunk', 'created': 1, 'model': model, 'choices': [], 'usage': usage})}\n\n"
        tail += "data: [DONE]\n\n"
        await send({"type": "http.response.body", "body": tail.encode(), "more_body": False})


async def _send(send, status: int, payload: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await _send_raw(send, status, json.dumps(payload).encode(), b"application/json", headers)


async def _send_raw(
    send, status: int, body: bytes, content_type: bytes, headers: list[tuple[bytes, bytes]] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _drop_connection(send) -> None:
    """Reset the TCP connection under this request (SO_LINGER 0, then abort: the peer sees a reset).

    uvicorn's `send` is a method of the request cycle, which holds the connection's transport."""
    transport = send.__self__.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
