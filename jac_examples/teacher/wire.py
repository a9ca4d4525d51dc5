"""OpenAI chat-completion wire format: the JSON body and the SSE stream.

The teacher's logic produces a `Reply` (content text or tool calls); this module is the only
place that knows how OpenAI spells it, so the answers look exactly like what the upstream
sends: `chat.completion` objects with `usage`, or `chat.completion.chunk` events ending in
`data: [DONE]` (plus a usage-only chunk when `stream_options.include_usage` is set).
Token counts are estimates (about four characters per token), which is all a fake needs.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_STREAM_PIECE = 24  # characters per content delta: small enough that clients really stream


@dataclass
class Reply:
    content: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    flaw: str | None = None  # which flaw was injected, if any (exposed as a response header)

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


def estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def prompt_text(body: dict[str, Any]) -> str:
    """All the text a request carries (for the prompt-token estimate)."""
    parts = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if isinstance(p, dict)]
    if body.get("tools"):
        parts.append(json.dumps(body["tools"]))
    return "".join(parts)


def usage(body: dict[str, Any], reply: Reply) -> dict[str, int]:
    prompt = estimate_tokens(prompt_text(body))
    out_text = reply.content or json.dumps(reply.tool_calls)
    completion = estimate_tokens(out_text)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _ids() -> tuple[str, int]:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())


def completion(body: dict[str, Any], model: str, reply: Reply) -> dict[str, Any]:
    cid, created = _ids()
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = reply.tool_calls
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}],
        "usage": usage(body, reply),
    }


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


def stream_chunks(body: dict[str, Any], model: str, reply: Reply, include_usage: bool) -> Iterator[bytes]:
    cid, created = _ids()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }
        )

    yield chunk({"role": "assistant", "content": ""})
    if reply.tool_calls:
        yield chunk({"tool_calls": [{"index": i, **call} for i, call in enumerate(reply.tool_calls)]})
    else:
        text = reply.content or ""
        for start in range(0, len(text), _STREAM_PIECE):
            yield chunk({"content": text[start : start + _STREAM_PIECE]})
    yield chunk({}, reply.finish_reason)
    if include_usage:
        yield _sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage(body, reply),
            }
        )
    yield b"data: [DONE]\n\n"
