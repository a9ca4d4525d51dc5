"""OpenAI chat-completions wire types: only what the proxy validates before forwarding.

The proxy forwards the client's body byte for byte, so these types check shape (a bad
request is answered 400 here and never reaches the upstream) without dropping fields
they do not name: `msgspec.convert` runs on the already-decoded dict and its result
is thrown away. They also give the generated OpenAPI schema its request model.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


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


def validation_error(payload: Any) -> str | None:
    """None when the decoded body is a valid chat request, else a one-line reason."""
    if not isinstance(payload, dict):
        return "request body must be a JSON object"
    if "messages" not in payload:
        return "missing required field: messages"
    try:
        request = msgspec.convert(payload, ChatCompletionRequest)
    except msgspec.ValidationError as exc:
        return str(exc)
    if not request.messages:
        return "messages must contain at least one message"
    return None
