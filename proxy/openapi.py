"""The request body of POST /v1/chat/completions in the generated OpenAPI schema.

The handler reads raw bytes (it forwards them untouched), so Litestar cannot infer the
body model; this operation class adds it from the msgspec wire types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.spec import Operation

from understudy.proxy.types import ChatCompletionRequest


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """msgspec emits `$defs` references; OpenAPI tools want them resolved in place."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.rsplit("/", 1)[1]], defs)
        return {key: _inline_refs(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline_refs(item, defs) for item in node]
    return node


def chat_request_schema() -> dict[str, Any]:
    schema = msgspec.json.schema(ChatCompletionRequest)
    defs = schema.pop("$defs", {})
    return _inline_refs(schema, defs)


@dataclass
class ChatCompletionsOperation(Operation):
    def to_schema(self) -> dict[str, Any]:
        schema = super().to_schema()
        schema["requestBody"] = {"required": True, "content": {"application/json": {"schema": chat_request_schema()}}}
        return schema
