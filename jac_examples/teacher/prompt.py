"""Reading a chat-completion request the way byLLM writes it.

What byLLM sends (see shared/fixtures/byllm): a system message, then a first user message
whose first text part is

    <header: docstring, `sem`, or the bare function name>
    <blank line>
    name = (<python repr>, '<semstr>')      one line per argument

byLLM 0.6 adds a second content part starting "Schema requirements:" (0.4 does not); content
may be a string or a list of parts. Typed outputs carry `response_format.json_schema`; retries
append a user message starting "Your previous response could not be used"; tool loops append
an assistant message with `tool_calls` and `role: tool` results. The `http_client` transport
adds `metadata.jac_caller_name`.

`parse_request` reduces all that to a `ParsedRequest`; it never raises on odd input (an
unknown prompt simply has no arguments).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from understudy.jac_examples.teacher.pyrepr import parse_arg_tuple

RETRY_MARKER = "Your previous response could not be used"
_ARG_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*) = (\(.*\))$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


@dataclass
class ParsedRequest:
    body: dict[str, Any]
    model: str = "teacher"
    system: str = ""
    header: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    semstrs: dict[str, str | None] = field(default_factory=dict)
    schema_name: str | None = None
    schema: dict[str, Any] | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_results: int = 0
    is_retry: bool = False
    caller_name: str | None = None
    stream: bool = False
    include_usage: bool = False

    @property
    def function_name(self) -> str | None:
        """The call site's function name when the request reveals it."""
        if self.caller_name:
            return self.caller_name
        if _IDENTIFIER.match(self.header):
            return self.header.rsplit(".", 1)[-1]
        return None

    @property
    def tool_names(self) -> list[str]:
        return [t.get("function", {}).get("name", "") for t in self.tools if isinstance(t, dict)]


def message_text(message: Any) -> list[str]:
    """The text parts of a message's content (string or list of parts)."""
    if not isinstance(message, dict):
        return []
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, str):
                texts.append(part)
        return texts
    return []


def split_prompt(text: str) -> tuple[str, dict[str, Any], dict[str, str | None]]:
    """Header, argument values and argument semstrs of byLLM's first user text.

    Argument lines are the trailing run of `name = (...)` lines; everything above them is the
    header (a docstring may itself contain blank lines, so we scan from the bottom).
    """
    lines = text.rstrip("\n").split("\n")
    cut = len(lines)
    while cut > 0 and _ARG_LINE.match(lines[cut - 1]):
        cut -= 1
    args: dict[str, Any] = {}
    semstrs: dict[str, str | None] = {}
    for line in lines[cut:]:
        match = _ARG_LINE.match(line)
        assert match is not None  # every line past `cut` matched above
        value, sem = parse_arg_tuple(match.group(2))
        args[match.group(1)] = value
        semstrs[match.group(1)] = sem
    return "\n".join(lines[:cut]).strip(), args, semstrs


def parse_request(body: dict[str, Any]) -> ParsedRequest:
    req = ParsedRequest(body=body, model=str(body.get("model") or "teacher"))
    messages = found if isinstance(found := body.get("messages"), list) else []
    first_user_seen = False
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        texts = message_text(message)
        if role == "system" and not req.system:
            req.system = "\n".join(texts)
        elif role == "user" and not first_user_seen:
            first_user_seen = True
            if texts:
                req.header, req.args, req.semstrs = split_prompt(texts[0])
        elif role == "user" and any(t.startswith(RETRY_MARKER) for t in texts):
            req.is_retry = True
        elif role == "tool":
            req.tool_results += 1

    rf = body.get("response_format")
    if isinstance(rf, dict):
        js = rf.get("json_schema")
        if isinstance(js, dict):
            req.schema_name = js.get("name") if isinstance(js.get("name"), str) else None
            req.schema = js.get("schema") if isinstance(js.get("schema"), dict) else None
        elif isinstance(rf.get("schema"), dict):  # llama.cpp-style json_object + schema
            req.schema = rf["schema"]

    tools = body.get("tools")
    req.tools = [t for t in tools if isinstance(t, dict)] if isinstance(tools, list) else []
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("jac_caller_name"), str):
        req.caller_name = metadata["jac_caller_name"]
    req.stream = body.get("stream") is True
    options = body.get("stream_options")
    req.include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return req
