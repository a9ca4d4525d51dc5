"""One plain prompt format shared by training and serving (the full rendering of a request).

A site's adapter may read the shorter site-compact rendering instead (`inference.site_prompt`,
whose `render_request` is what training and serving call); both are built from the blocks here.

The local base models (the bundled Gemma 3 270M, a tiny test Llama, or a hub base such as
TinyLlama) are used *without* their own chat template: the project owns the format, so the
exact same text is produced when an example is trained and when the proxy later serves the
same call site locally. Any drift between the two would silently cost accuracy, so this
module is the only place the format is defined and both sides import it.

Layout (each block ends with END_MARKER and a newline)::

    <|system|>
    You are ...<|end|>
    <|user|>
    Summarise ...<|end|>
    <|tools|>
    [{"name":"roll","description":"...","parameters":{...}}]<|end|>
    <|schema|>
    {"type":"object","properties":{...}}<|end|>
    <|assistant|>
    {"answer": ...}<|end|>          <- render_target(completion): the training target

- The conversation comes first, in its original order (history assistant turns keep their
  text and their tool calls as compact JSON); then the tool list and the response schema,
  right before the assistant tag, closest to where generation starts.
- JSON is rendered compactly (no spaces) and in the order given: property order in a schema
  is meaningful (it is the order the model should write the fields in), so keys are not
  sorted. The same request therefore always renders to the same bytes.
- The prompt ends with "<|assistant|>\\n" and the target is the exact upstream completion
  followed by END_MARKER; generation stops on STOP_SEQUENCES, which llama-cpp strips from
  the returned text, so a local answer is the completion without any marker.

Rendering is pure string work (a few json.dumps calls): cheap enough for the request path.
"""

from __future__ import annotations

import json
from typing import Any

END_MARKER = "<|end|>"  # closes every block and every target; generation stops on it
ASSISTANT_TAG = "<|assistant|>\n"  # the prompt always ends with this: the model answers next
# Stop on the end marker; also on a new user turn in case a model forgets the end marker.
STOP_SEQUENCES: list[str] = [END_MARKER, "\n<|user|>"]


def _compact_json(value: Any) -> str:
    """Deterministic compact JSON: no whitespace, key order as given, UTF-8 kept as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _content_text(content: Any) -> str:
    """An OpenAI message `content` as text: a string, None, or a list of typed parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict):
                kind = part.get("type")
                if kind == "text":
                    parts.append(str(part.get("text", "")))
                elif kind in ("image_url", "input_image", "image"):
                    parts.append("[image]")  # the small local model is text-only
                else:
                    parts.append(_compact_json(part))
            else:
                parts.append(str(part))
        return "\n".join(parts)
    return _compact_json(content)


def _tool_calls_text(tool_calls: list[dict]) -> str:
    """Assistant tool calls in history as compact JSON [{"name":..,"arguments":..}]."""
    calls = []
    for call in tool_calls:
        fn = call.get("function", call)
        args = fn.get("arguments", "")
        # arguments arrive as a JSON string on the wire; keep them parsed when possible
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                pass
        calls.append({"name": fn.get("name"), "arguments": args})
    return _compact_json(calls)


def _render_message(message: dict) -> str:
    role = message.get("role", "user")
    if role == "developer":  # OpenAI's newer name for the system role
        role = "system"
    text = _content_text(message.get("content"))
    if role == "assistant" and message.get("tool_calls"):
        calls = "<|tool_calls|>" + _tool_calls_text(message["tool_calls"])
        text = f"{text}\n{calls}" if text else calls
    if role == "tool" and message.get("name"):
        text = f"{message['name']}: {text}"
    return f"<|{role}|>\n{text}{END_MARKER}\n"


def _schema_of(response_format: dict | None) -> str | None:
    """The text of the response-format block, or None when the answer is free text."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema", spec)
        return _compact_json(schema)
    if kind == "json_object":
        return "json"
    return None  # "text" or unknown types: no constraint to show


def _tools_text(tools: list[dict] | None) -> str | None:
    if not tools:
        return None
    specs = []
    for tool in tools:
        fn = tool.get("function", tool)
        spec = {"name": fn.get("name")}
        if fn.get("description"):
            spec["description"] = fn["description"]
        if fn.get("parameters") is not None:
            spec["parameters"] = fn["parameters"]
        specs.append(spec)
    return _compact_json(specs)


def render_prompt(
    messages: list[dict],
    response_format: dict | None = None,
    tools: list[dict] | None = None,
) -> str:
    """The prompt text for a chat request; ends with the assistant tag (see module doc)."""
    blocks = [_render_message(m) for m in messages]
    tools_text = _tools_text(tools)
    if tools_text is not None:
        blocks.append(f"<|tools|>\n{tools_text}{END_MARKER}\n")
    schema_text = _schema_of(response_format)
    if schema_text is not None:
        blocks.append(f"<|schema|>\n{schema_text}{END_MARKER}\n")
    blocks.append(ASSISTANT_TAG)
    return "".join(blocks)


def render_target(completion: str) -> str:
    """The training target: the exact upstream completion, then the end marker."""
    return completion + END_MARKER
