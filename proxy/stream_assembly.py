"""Turn the SSE bytes of a streamed chat completion back into one `chat.completion`.

The recorder stores streamed and non-streamed calls the same way, so training and
reports never care how a call was delivered.
"""

from __future__ import annotations

from typing import Any

import msgspec

_decoder = msgspec.json.Decoder()


def sse_data(line: bytes) -> Any:
    """The JSON payload of one SSE `data:` line; None for `[DONE]`, comments, other fields and
    payloads that do not parse (or are JSON null: no chunk either way)."""
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if not data or data == b"[DONE]":
        return None
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError:
        return None


def iter_sse_events(raw: bytes):
    """JSON payloads of the `data:` lines, in order; `[DONE]` and comments skipped."""
    for line in raw.splitlines():
        payload = sse_data(line)
        if payload is not None:
            yield payload


def assemble_completion(raw: bytes) -> dict[str, Any] | None:
    """The equivalent non-streamed completion, or None when no chunk parsed."""
    completion: dict[str, Any] | None = None
    choices: dict[int, dict[str, Any]] = {}
    for chunk in iter_sse_events(raw):
        if not isinstance(chunk, dict):
            continue
        if completion is None:
            completion = {
                "id": chunk.get("id"),
                "object": "chat.completion",
                "created": chunk.get("created"),
                "model": chunk.get("model"),
                "choices": [],
                "usage": None,
            }
        if chunk.get("usage"):
            completion["usage"] = chunk["usage"]
        for delta_choice in chunk.get("choices") or []:
            _merge_choice(choices, delta_choice)
    if completion is None:
        return None
    completion["choices"] = [_finish_choice(index, choice) for index, choice in sorted(choices.items())]
    return completion


def _merge_choice(choices: dict[int, dict[str, Any]], delta_choice: dict[str, Any]) -> None:
    index = delta_choice.get("index", 0)
    choice = choices.setdefault(
        index, {"role": "assistant", "content": [], "tool_calls": {}, "finish_reason": None, "last_call": None}
    )
    delta = delta_choice.get("delta") or {}
    if delta.get("role"):
        choice["role"] = delta["role"]
    if delta.get("content"):
        choice["content"].append(delta["content"])
    for position, call in enumerate(delta.get("tool_calls") or []):
        slot = choice["tool_calls"].setdefault(
            _call_index(choice, call, position),
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if call.get("id"):
            slot["id"] = call["id"]
        function = call.get("function") or {}
        if function.get("name"):
            slot["function"]["name"] += function["name"]
        if function.get("arguments"):
            slot["function"]["arguments"] += function["arguments"]
    if delta_choice.get("finish_reason"):
        choice["finish_reason"] = delta_choice["finish_reason"]


def opens_a_call(call: dict[str, Any], position: int) -> bool:
    """Whether an index-less tool-call delta starts a new call (Gemini omits `index` and sends
    each call whole, with an empty id): it has an id or a name, or is not the first in its
    delta's list; a bare arguments fragment continues the call before it."""
    function = found if isinstance(found := call.get("function"), dict) else {}
    return bool(call.get("id") or function.get("name") or position > 0)


def _call_index(choice: dict[str, Any], call: dict[str, Any], position: int) -> int:
    """A delta's tool-call slot: its `index`, or for an index-less one (`opens_a_call`) the next
    slot or the last one."""
    if isinstance(call.get("index"), int):
        index = call["index"]
    elif opens_a_call(call, position) or choice["last_call"] is None:
        index = max(choice["tool_calls"], default=-1) + 1
    else:
        index = choice["last_call"]
    choice["last_call"] = index
    return index


def _finish_choice(index: int, choice: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": choice["role"],
        "content": "".join(choice["content"]) if choice["content"] else None,
    }
    if choice["tool_calls"]:
        message["tool_calls"] = [call for _, call in sorted(choice["tool_calls"].items())]
    return {"index": index, "message": message, "finish_reason": choice["finish_reason"]}
