"""Per-provider adjustments where a provider's OpenAI compatibility falls short of what clients send.

Pure functions on decoded bodies: they never mutate their argument and return the *same
object* when nothing needs changing, so the proxy can keep forwarding the client's bytes
untouched (`adjusted is payload`) and re-encode only when a route's provider needs it.
A request that a provider cannot serve at all raises `UnsupportedRequest`, naming the
provider and the model, rather than being sent to fail upstream with a vaguer message.

Handled differences (sources checked for this module):

Anthropic (OpenAI SDK compatibility layer, https://api.anthropic.com/v1; table of request
fields at https://docs.anthropic.com/en/api/openai-sdk):
- `response_format` is listed as "Ignored": a typed call (byLLM sends `json_schema` with
  `strict: true`) would get free prose back. The field is dropped and the schema is put
  into a system instruction ("reply with only a JSON value matching this schema"); system
  messages are hoisted and concatenated by Anthropic anyway (same page). `json_object`
  gets the same instruction without a schema, `text` is simply dropped. Since nothing
  enforces the schema, `adjust_response` takes ```json fences off the reply of such a
  call (and proxy/stream_adjust.py off a streamed one).
- `n` "must be exactly 1": `n > 1` raises `UnsupportedRequest` (400) naming provider and
  model, instead of an upstream error.
- `temperature` is accepted "between 0 and 1 (inclusive); values greater than 1 are capped
  at 1": clamped here too, so the recorded forwarded request shows the value really used.
- `stream_options` is "fully supported" and `metadata` "ignored": nothing to do.

Gemini (https://generativelanguage.googleapis.com/v1beta/openai, doc:
https://ai.google.dev/gemini-api/docs/openai). The endpoint rejects fields it does not know
with `400 Invalid JSON payload received. Unknown name "<field>": Cannot find field.`:
- `metadata` and `store` (reported in ed-donner/agents#45, Alishahryar1/free-claude-code#1548,
  liliMozi/openhanako#394; byLLM always sends `metadata`): dropped.
- `$schema` inside a JSON schema (`Unknown name "$schema" at
  'generation_config.response_schema'`, QuantumNous/new-api#1037; same for tool parameters):
  removed from `response_format.json_schema.schema` and `tools[].function.parameters`.
- Responses: a reply that calls tools may come back with `finish_reason: "stop"` instead
  of `"tool_calls"`, and streamed `tool_calls` deltas without an `index`
  (discuss.ai.google.dev thread "OpenAI Compatibility with NodeJS - Error"). Clients that
  branch on `finish_reason == "tool_calls"` or assemble deltas by index break, so
  `adjust_response` and, for streams, proxy/stream_adjust.py fill them in.

Both non-OpenAI providers: top-level `null` values (byLLM sends `"tools": null`,
`"max_tokens": null`) are dropped. In OpenAI's API `null` means "not set", so dropping them
changes nothing, and strict validators on the other side never see a null where they expect
a list or an integer.

`openai` and `openai-compatible` routes are forwarded exactly as the client sent them.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Providers whose bodies may need changing; for the others the client's bytes pass through.
ADJUSTED_PROVIDERS = frozenset({"anthropic", "gemini"})

_GEMINI_UNKNOWN_FIELDS = ("metadata", "store")
_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*[ \t]*\r?\n(.*?)\r?\n?```\s*$", re.DOTALL)


class UnsupportedRequest(Exception):
    """A request the route's provider cannot serve; answered 400 without contacting it."""

    status = 400
    code = "unsupported_by_provider"

    def __init__(self, provider: str, model: str | None, reason: str, param: str | None = None):
        self.provider = provider
        self.model = model
        self.reason = reason
        self.param = param
        super().__init__(f"{provider} cannot serve this request for model {model!r}: {reason}")


def needs_adjustment(provider: str) -> bool:
    return provider in ADJUSTED_PROVIDERS


def adjust_request(provider: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body to send to `provider`; `body` itself when nothing changes."""
    if provider == "anthropic":
        return _anthropic_request(body)
    if provider == "gemini":
        return _gemini_request(body)
    return body


def adjust_response(provider: str, body: dict[str, Any], request: dict[str, Any] | None = None) -> dict[str, Any]:
    """A non-streamed completion as the client expects it; `body` itself when nothing changes.

    `request` is the client's request (for Anthropic: whether JSON output was asked for).
    """
    if provider == "anthropic":
        if request is not None and wants_json(request):
            return _map_choices(body, _strip_fences)
        return body
    if provider == "gemini":
        return _map_choices(body, _gemini_finish_reason)
    return body


# --- Anthropic -----------------------------------------------------------------------------


def _anthropic_request(body: dict[str, Any]) -> dict[str, Any]:
    model = body.get("model")
    n = body.get("n")
    if n is not None and n != 1:
        raise UnsupportedRequest(
            "anthropic", model, f"n must be 1 (got {n}); Anthropic returns a single choice", param="n"
        )
    out = _without_nulls(body)
    temperature = out.get("temperature")
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature > 1:
        out = _copy_once(out, body)
        out["temperature"] = 1.0
    if "response_format" in out:
        out = _copy_once(out, body)
        instruction = _json_instruction(out.pop("response_format"))
        if instruction:
            out["messages"] = _with_system_instruction(out.get("messages") or [], instruction)
    return out


def _json_instruction(response_format: Any) -> str | None:
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "Reply with a single JSON object and nothing else: no prose, no code fences."
    if kind != "json_schema":
        return None
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema") if isinstance(spec, dict) else None
    name = spec.get("name") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        return "Reply with a single JSON value and nothing else: no prose, no code fences."
    label = f' ("{name}")' if name else ""
    return (
        "Reply with only a JSON value that conforms to this JSON Schema"
        + label
        + ", with no prose and no code fences:\n"
        + json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    )


def _with_system_instruction(messages: list[Any], instruction: str) -> list[Any]:
    """Append the instruction to the leading system message, or add one in front."""
    messages = list(messages)
    first = messages[0] if messages else None
    if (
        isinstance(first, dict)
        and first.get("role") in ("system", "developer")
        and isinstance(first.get("content"), str)
    ):
        messages[0] = {**first, "content": first["content"].rstrip() + "\n\n" + instruction}
    else:
        messages.insert(0, {"role": "system", "content": instruction})
    return messages


def wants_json(request: dict[str, Any]) -> bool:
    response_format = request.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in ("json_schema", "json_object")


def _strip_fences(choice: dict[str, Any]) -> dict[str, Any]:
    message = choice.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        return choice
    match = _FENCE.match(message["content"])
    if match is None:
        return choice
    return {**choice, "message": {**message, "content": match.group(1).strip()}}


# --- Gemini --------------------------------------------------------------------------------


def _gemini_request(body: dict[str, Any]) -> dict[str, Any]:
    out = _without_nulls(body)
    for name in _GEMINI_UNKNOWN_FIELDS:
        if name in out:
            out = _copy_once(out, body)
            del out[name]
    response_format = out.get("response_format")
    if isinstance(response_format, dict) and isinstance(response_format.get("json_schema"), dict):
        spec = response_format["json_schema"]
        schema = spec.get("schema")
        if isinstance(schema, dict) and "$schema" in schema:
            out = _copy_once(out, body)
            out["response_format"] = {
                **response_format,
                "json_schema": {**spec, "schema": _without_key(schema, "$schema")},
            }
    tools = out.get("tools")
    if isinstance(tools, list) and any(_tool_has_schema_key(tool) for tool in tools):
        out = _copy_once(out, body)
        out["tools"] = [_tool_without_schema_key(tool) for tool in tools]
    return out


def _tool_has_schema_key(tool: Any) -> bool:
    function = tool.get("function") if isinstance(tool, dict) else None
    parameters = function.get("parameters") if isinstance(function, dict) else None
    return isinstance(parameters, dict) and "$schema" in parameters


def _tool_without_schema_key(tool: Any) -> Any:
    if not _tool_has_schema_key(tool):
        return tool
    function = tool["function"]
    return {**tool, "function": {**function, "parameters": _without_key(function["parameters"], "$schema")}}


def _gemini_finish_reason(choice: dict[str, Any]) -> dict[str, Any]:
    message = choice.get("message")
    if isinstance(message, dict) and message.get("tool_calls") and choice.get("finish_reason") == "stop":
        return {**choice, "finish_reason": "tool_calls"}
    return choice


# --- helpers -------------------------------------------------------------------------------


def _without_nulls(body: dict[str, Any]) -> dict[str, Any]:
    if any(value is None for value in body.values()):
        return {key: value for key, value in body.items() if value is not None}
    return body


def _copy_once(current: dict[str, Any], original: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy unless `current` already is one (never mutate the caller's dict)."""
    return dict(original) if current is original else current


def _without_key(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


def _map_choices(body: dict[str, Any], fix) -> dict[str, Any]:
    choices = body.get("choices")
    if not isinstance(choices, list):
        return body
    fixed = [fix(choice) if isinstance(choice, dict) else choice for choice in choices]
    if all(new is old for new, old in zip(fixed, choices)):
        return body
    return {**body, "choices": fixed}
