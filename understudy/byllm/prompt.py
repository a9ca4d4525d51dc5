"""How byLLM lays out a request, and the call's arguments read back from it.

byLLM (see tests/fixtures/byllm) sends a system message containing BYLLM_SYSTEM_MARKER and a
first user message whose first text part is

    <header: docstring, `sem` text, or the bare function name>
    <blank line>
    <arg> = (<python repr of the value>, '<semstr>')     one line per argument

byLLM 0.6 adds a second text part starting SCHEMA_PART_MARKER; retries append a user message
starting RETRY_MARKER; tool loops append assistant `tool_calls` and `role: tool` results.

Call-site identification (proxy) and validators (which check an answer against the request it
answers) both read this layout, so it is described once, here. Argument lines are read only
from requests that carry byLLM's system text: a generic client's user text that happens to
contain `name = (...)` lines is its content, not an argument block.

Argument values are Python reprs; a Jac object's repr looks like a constructor call
(`Level(name='Crypt', difficulty=3)`), which `ast.literal_eval` refuses. `python_value`
walks the parsed expression itself (never executing it) and turns calls into dicts, keeping
the class name under TYPE_KEY; what it cannot read stays as its source text.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from typing import Any

BYLLM_SYSTEM_MARKER = "This is a task you must complete by returning only the output."
RETRY_MARKER = "Your previous response could not be used"
SCHEMA_PART_MARKER = "Schema requirements:"
TYPE_KEY = "__type__"
# The byLLM plugin marks its exact tags with metadata.understudy_site_source = this: only such a
# tag may take over the history of the untagged site it replaces (proxy/site_registry.py).
PLUGIN_TAG_SOURCE = "plugin"

ARG_LINE = re.compile(r"^([A-Za-z_]\w*) = \(", re.MULTILINE)
ARGS_BLOCK_START = re.compile(r"\n\n(?=[A-Za-z_]\w* = \()")
MAX_REPR_CHARS = 200_000  # a larger argument is kept as text rather than parsed


def message_text(message: Mapping[str, Any]) -> str:
    """A message's text: its string content, or its text parts joined by newlines."""
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else ""


def system_text(messages: list[Any]) -> str:
    return "\n".join(
        message_text(m) for m in messages if isinstance(m, dict) and m.get("role") in ("system", "developer")
    )


def first_user_index(messages: list[Any]) -> int | None:
    return next((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"), None)


def first_user_text(message: Mapping[str, Any]) -> str:
    """The first user message without byLLM 0.6's derived "Schema requirements" part."""
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "text"
            and not str(part.get("text") or "").startswith(SCHEMA_PART_MARKER)
        )
    return content if isinstance(content, str) else ""


def is_byllm(system: str) -> bool:
    return BYLLM_SYSTEM_MARKER in system


def split_prompt(text: str) -> tuple[str, str | None]:
    """(header, argument block or None) of byLLM's first user text."""
    match = ARGS_BLOCK_START.search(text)
    if match is None:
        return text.strip(), None
    return text[: match.start()].strip(), text[match.end() :]


def argument_lines(block: str) -> list[tuple[str, str]]:
    """(name, right-hand side) per argument; a value may run over several lines."""
    starts = list(ARG_LINE.finditer(block))
    out = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(block)
        out.append((match.group(1), block[match.end() - 1 : end].rstrip("\n")))
    return out


class _Unreadable(ValueError):
    pass


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise _Unreadable(type(node).__name__)


def _value(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_value(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {str(_value(k)) if k is not None else "**": _value(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _value(node.operand)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
        raise _Unreadable("unary operator on a non-number")
    if isinstance(node, ast.Call):
        out: dict[str, Any] = {TYPE_KEY: _dotted(node.func)}
        if node.args:
            out["_args"] = [_value(a) for a in node.args]
        for keyword in node.keywords:
            if keyword.arg is None:
                raise _Unreadable("**kwargs in a repr")
            out[keyword.arg] = _value(keyword.value)
        return out
    if isinstance(node, (ast.Name, ast.Attribute)):
        return _dotted(node)  # enum members (`Kind.GOBLIN`) and specials (`inf`) stay as text
    raise _Unreadable(type(node).__name__)


def python_value(source: str) -> Any:
    """The plain-data value a Python repr describes; its text when it cannot be read."""
    if len(source) > MAX_REPR_CHARS:
        return source
    try:
        return _value(ast.parse(source.strip(), mode="eval").body)
    except (SyntaxError, _Unreadable, RecursionError, ValueError, MemoryError):
        return source


def argument_value(rhs: str) -> Any:
    """The value of one `(<repr>, '<semstr>')` right-hand side."""
    parsed = python_value(rhs)
    if isinstance(parsed, list) and len(parsed) == 2 and (parsed[1] is None or isinstance(parsed[1], str)):
        return parsed[0]
    text = rhs.strip()
    if text.startswith("(") and text.endswith(")"):  # an unreadable value: keep its repr text
        inner = text[1:-1]
        for separator in (", None", ", '", ', "'):
            cut = inner.rfind(separator)
            if cut > 0:
                return inner[:cut]
        return inner
    return text


def without_types(value: Any) -> Any:
    """A parsed value as an answer's JSON would carry it: no TYPE_KEY / positional tags."""
    if isinstance(value, dict):
        return {k: without_types(v) for k, v in value.items() if k not in (TYPE_KEY, "_args")}
    if isinstance(value, list):
        return [without_types(v) for v in value]
    return value


class CallArguments(dict):
    """The arguments of one call, by name (byLLM's argument lines), as plain data.

    `tool_calls` holds the tool calls already made in the conversation, with their JSON
    arguments parsed (what a generic client's tool loop carries); `request` is the whole
    chat-completion body, for validators that need more.
    """

    def __init__(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        tool_calls: list[dict[str, Any]] | None = None,
        request: Mapping[str, Any] | None = None,
        source: str = "none",
    ):
        super().__init__(values or {})
        self.tool_calls = tool_calls or []
        self.request = request or {}
        self.source = source  # byllm | tools | none

    def plain(self) -> dict[str, Any]:
        """The values without TYPE_KEY tags (objects as the JSON an answer would contain)."""
        return {name: without_types(value) for name, value in self.items()}

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "values": self.plain(), "tool_calls": self.tool_calls}


def call_arguments(request: Mapping[str, Any]) -> CallArguments:
    """The arguments a request carries: byLLM's argument lines, and earlier tool calls."""
    given = request.get("messages")
    messages: list[Any] = given if isinstance(given, list) else []
    tool_calls = _tool_calls(messages)
    index = first_user_index(messages)
    if index is not None and is_byllm(system_text(messages)):
        _, block = split_prompt(first_user_text(messages[index]))
        if block is not None:
            values = {name: argument_value(rhs) for name, rhs in argument_lines(block)}
            return CallArguments(values, tool_calls=tool_calls, request=request, source="byllm")
    return CallArguments(tool_calls=tool_calls, request=request, source="tools" if tool_calls else "none")


def _tool_calls(messages: list[Any]) -> list[dict[str, Any]]:
    calls = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("tool_calls"), list):
            continue
        for call in message["tool_calls"]:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                continue
            arguments: Any = function.get("arguments")
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    pass
            calls.append({"name": function.get("name"), "arguments": arguments})
    return calls
