"""OpenAI chat-completions wire types: only what the proxy validates before forwarding.

The proxy forwards the client's body byte for byte, so these types check shape (a bad
request is answered 400 here and never reaches the upstream) without dropping fields
they do not name: `msgspec.convert` runs on the already-decoded dict and its result
is thrown away. They also give the generated OpenAPI schema its request model.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

# Bounds on what one request may hold, checked before anything walks the body (the proxy's own
# code and the libraries it calls recurse over it). Far above what any real client sends: the
# deepest byLLM request in the captures nests 12 levels, OpenAI itself caps a JSON schema at 10.
MAX_DEPTH = 64  # nesting of objects and arrays anywhere in the body
MAX_MESSAGES = 4096
MAX_PARTS = 512  # content parts of one message
MAX_TOOLS = 512
MAX_TOOL_CALLS = 512  # tool calls of one assistant message


class TextPart(msgspec.Struct, forbid_unknown_fields=False):
    type: str
    text: str | None = None


class ToolCallFunction(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class ToolCall(msgspec.Struct):
    id: str | None = None
    type: str | None = None
    function: ToolCallFunction | None = None


class ChatMessage(msgspec.Struct):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionSpec(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(msgspec.Struct):
    type: str
    function: FunctionSpec | None = None


class ResponseFormat(msgspec.Struct):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(msgspec.Struct):
    """POST /v1/chat/completions. Fields not named here are forwarded untouched."""

    model: str
    messages: list[ChatMessage]
    stream: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    stream_options: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None


def validation_error(payload: Any, body: bytes | None = None) -> str | None:
    """None when the decoded body is a valid chat request, else a one-line reason. `body`: the
    bytes `payload` was decoded from, when known (it can spare the nesting walk, below)."""
    if not isinstance(payload, dict):
        return "request body must be a JSON object"
    if "messages" not in payload:
        return "missing required field: messages"
    # Every level of nesting opens with a `{` or `[`, so a body holding at most MAX_DEPTH of them
    # (those inside strings only add to the count) cannot nest deeper: the walk over every node,
    # a fifth of validation's cost, is skipped for the common small request.
    if body is None or body.count(b"{") + body.count(b"[") > MAX_DEPTH:
        too_deep = nesting_error(payload)
        if too_deep is not None:
            return too_deep
    too_many = _count_error(payload)
    if too_many is not None:
        return too_many
    try:
        request = msgspec.convert(payload, ChatCompletionRequest)
    except msgspec.ValidationError as exc:
        return str(exc)
    if not request.messages:
        return "messages must contain at least one message"
    for index, message in enumerate(request.messages):
        for part_index, part in enumerate(message.content if isinstance(message.content, list) else ()):
            if part.type == "text" and not isinstance(part.text, str):
                return f"a text part must have a string `text` - at `$.messages[{index}].content[{part_index}].text`"
    return None


def nesting_error(payload: Any, limit: int = MAX_DEPTH) -> str | None:
    """A reason when objects and arrays nest deeper than `limit` (an explicit stack: no recursion)."""
    stack = [(payload, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return f"the body nests deeper than {limit} levels"
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return None


def _count_error(payload: dict[str, Any]) -> str | None:
    messages, tools = payload.get("messages"), payload.get("tools")
    if isinstance(messages, list) and len(messages) > MAX_MESSAGES:
        return f"too many messages: {len(messages)} (at most {MAX_MESSAGES})"
    if isinstance(tools, list) and len(tools) > MAX_TOOLS:
        return f"too many tools: {len(tools)} (at most {MAX_TOOLS})"
    for index, message in enumerate(messages if isinstance(messages, list) else ()):
        if not isinstance(message, dict):
            continue
        content, calls = message.get("content"), message.get("tool_calls")
        if isinstance(content, list) and len(content) > MAX_PARTS:
            return f"too many content parts in messages[{index}]: {len(content)} (at most {MAX_PARTS})"
        if isinstance(calls, list) and len(calls) > MAX_TOOL_CALLS:
            return f"too many tool calls in messages[{index}]: {len(calls)} (at most {MAX_TOOL_CALLS})"
    return None
