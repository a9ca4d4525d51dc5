"""Site-compact prompts: what a site's adapter reads of a request is only what varies between calls.

Every call of one `by llm()` site sends the same system text, docstring header, argument names
and semstrs, "Schema requirements" part, response schema and tool list; only the argument values,
tool results, later turns and retry corrections change (the call-site signature is a hash of
the static part). An adapter trained for that site sees the static part on every example, so it
can learn it instead of reading it: training and serving render the *compact* prompt

    <|site|>
    <site marker><|end|>
    <|args|>
    difficulty = 3
    level_width = 20<|end|>
    ...later turns (assistant tool calls, tool results, retry corrections), as in the full prompt...
    <|assistant|>

(a generic OpenAI client's site keeps its first user message whole, under `<|user|>`, since all of
it varies). `split_request` separates the two parts; `expand` puts a request back together from
them, and the tests check that this round-trips for every byLLM capture, so nothing that varies
is dropped. The static part's digest is recorded with the version (`SitePrompt.static_digest`):
a request whose static part differs is never rendered compactly for that adapter (it would be
asking a question the adapter never saw), `render_request` returns None and the caller answers
upstream. A site whose examples do not share one static part (an explicit tag grouping several
prompts), a request shape that cannot be split (an image in the first user message), or a
site policy `{"prompt": "full"}` keeps the full rendering (`inference.prompt_format`).

`render_request` is the one function training (targets, greedy samples, verification, held-out
evaluation) and serving use, so the two cannot drift apart.

Lean answers: with `SitePrompt.lean`, typed targets are the upstream's JSON re-serialised compactly
with keys in schema order, and generation uses a grammar with no optional whitespace
(`lean_json`, `inference.local_generate`), so a local answer costs the fewest tokens.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from understudy.byllm.prompt import (
    ARGS_BLOCK_START,
    SCHEMA_PART_MARKER,
    argument_lines,
    first_user_index,
    is_byllm,
    system_text,
)
from understudy.inference.prompt_format import ASSISTANT_TAG, END_MARKER, _render_message, render_prompt, render_target

COMPACT, FULL = "compact", "full"
SITE_TAG = "<|site|>\n"
ARGS_TAG = "<|args|>\n"


@dataclass(frozen=True)
class SitePrompt:
    """How a version renders its site's requests; saved in its training config."""

    mode: str = FULL  # compact | full
    marker: str = ""  # the site marker of compact prompts (the site id)
    static_digest: str | None = None  # the static part every request must share to be rendered compactly
    lean: bool = False  # typed answers as compact JSON, keys in schema order

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SitePrompt:
        """From a version's config; versions trained before compact prompts have none: full, not lean."""
        data = data or {}
        return cls(**{k: data[k] for k in ("mode", "marker", "static_digest", "lean") if k in data})

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PromptParts:
    static: dict[str, Any]  # the same on every call of the site
    varying: dict[str, Any]  # argument values (or the whole first user message), later turns
    digest: str = field(default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", _digest(self.static))


def _digest(static: dict[str, Any]) -> str:
    """A hash of the static part without byLLM 0.6's "Schema requirements" text: it is derived from
    the response schema (hashed anyway), and retries and byLLM 0.4 leave it out, as the call-site
    signature does (proxy.callsite)."""
    first = static.get("first")
    if isinstance(first, dict) and isinstance(first.get("content"), dict):
        layout = first["content"]
        kept = [p for p in layout["other_parts"] if not str(p.get("text", "")).startswith(SCHEMA_PART_MARKER)]
        static = {**static, "first": {**first, "content": {**layout, "other_parts": kept}}}
    text = json.dumps(static, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def split_request(request: Mapping[str, Any]) -> PromptParts | None:
    """The request's static and varying parts; None when they cannot be told apart safely."""
    messages = request.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None
    index = first_user_index(messages)
    if index is None:
        return None
    head, first, later = messages[:index], messages[index], messages[index + 1 :]
    if any(m.get("role") not in ("system", "developer") for m in head):
        return None  # a conversation that starts before its first user turn: no fixed preamble
    static: dict[str, Any] = {
        "head": head,
        "response_format": request.get("response_format"),
        "tools": request.get("tools") or None,
    }
    if not is_byllm(system_text(messages)):
        return PromptParts(static, {"first": first, "later": later})
    split = _split_first_user(first)
    if split is None:
        return None
    template, args = split
    static["first"] = template
    return PromptParts(static, {"args": args, "later": later})


def _split_first_user(message: dict[str, Any]) -> tuple[dict[str, Any], list[list[str]]] | None:
    """(the message with argument values cut out, [[name, value source], ...]) for byLLM's first turn."""
    content = message.get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if (
        not isinstance(parts, list)
        or not parts
        or not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in parts)
    ):
        return None  # images or odd parts: keep the full rendering
    text = parts[0]["text"]
    match = ARGS_BLOCK_START.search(text)
    header, block = (text, "") if match is None else (text[: match.start()], text[match.end() :])
    args, semstrs = [], []
    for name, rhs in argument_lines(block):
        value_and_sem = _value_and_semstr(rhs)
        if value_and_sem is None:
            return None
        args.append([name, value_and_sem[0]])
        semstrs.append([name, value_and_sem[1]])
    if _args_block(args, semstrs) != block:
        return None  # something in the block this reading does not account for
    template = {
        **message,
        "content": {
            "string": isinstance(content, str),
            "header": header,
            "separator": text[match.start() : match.end()] if match else "",
            "semstrs": semstrs,
            "other_parts": parts[1:],
        },
    }
    return template, args


def _value_and_semstr(rhs: str) -> tuple[str, str] | None:
    """`(<repr>, '<semstr>')` as its two source texts, or None when it does not read that way."""
    try:
        node = ast.parse(rhs, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(node, ast.Tuple) or len(node.elts) != 2:
        return None
    value, semstr = (ast.get_source_segment(rhs, e) for e in node.elts)
    if value is None or semstr is None or f"({value}, {semstr})" != rhs:
        return None
    return value, semstr


def _args_block(args: list[list[str]], semstrs: list[list[str]]) -> str:
    return "\n".join(f"{name} = ({value}, {sem})" for (name, value), (_, sem) in zip(args, semstrs))


def expand(parts: PromptParts) -> dict[str, Any]:
    """The request (messages, response_format, tools) its parts came from."""
    static, varying = parts.static, parts.varying
    if "args" in varying:
        template = static["first"]
        layout = template["content"]
        text = layout["header"] + layout["separator"] + _args_block(varying["args"], layout["semstrs"])
        content: Any = text if layout["string"] else [{"type": "text", "text": text}, *layout["other_parts"]]
        first = {**template, "content": content}
    else:
        first = varying["first"]
    return {
        "messages": [*static["head"], first, *varying["later"]],
        "response_format": static["response_format"],
        "tools": static["tools"],
    }


def compact_prompt(parts: PromptParts, marker: str) -> str:
    """The compact rendering: site marker, what varies, then the assistant tag."""
    varying = parts.varying
    blocks = [f"{SITE_TAG}{marker}{END_MARKER}\n"]
    if "args" in varying:
        lines = "\n".join(f"{name} = {value}" for name, value in varying["args"])
        blocks.append(f"{ARGS_TAG}{lines}{END_MARKER}\n")
    else:
        blocks.append(_render_message(varying["first"]))
    blocks.extend(_render_message(m) for m in varying["later"])
    blocks.append(ASSISTANT_TAG)
    return "".join(blocks)


def render_request(request: Mapping[str, Any], site_prompt: SitePrompt | None = None) -> str | None:
    """The prompt a site's adapter reads for this request; None when its static part is not the site's."""
    site_prompt = site_prompt or SitePrompt()
    if site_prompt.mode == COMPACT:
        parts = split_request(request)
        if parts is None or parts.digest != site_prompt.static_digest:
            return None
        return compact_prompt(parts, site_prompt.marker)
    return render_prompt(request["messages"], request.get("response_format"), request.get("tools") or None)


def render_with_prefix(request: Mapping[str, Any], site_prompt: SitePrompt | None = None) -> tuple[str, str] | None:
    """(prompt, its fixed prefix) for serving: the prefix is the same on every call of the site, so
    its evaluated state can be reused (`inference.local_generate`). None as for `render_request`."""
    site_prompt = site_prompt or SitePrompt()
    prompt = render_request(request, site_prompt)
    if prompt is None:
        return None
    if site_prompt.mode == COMPACT:
        return prompt, f"{SITE_TAG}{site_prompt.marker}{END_MARKER}\n"
    head = render_prompt([m for m in request["messages"] if m.get("role") in ("system", "developer")][:1])
    head = head[: -len(ASSISTANT_TAG)]
    return prompt, head if prompt.startswith(head) else ""


def render_training_pair(example: Mapping[str, Any], site_prompt: SitePrompt | None = None) -> tuple[str, str] | None:
    """(prompt, target) for a training example, or None when the site prompt cannot render it."""
    site_prompt = site_prompt or SitePrompt()
    prompt = render_request(example, site_prompt)
    if prompt is None:
        return None
    completion = example["completion"]
    if site_prompt.lean:
        completion = lean_json(completion, example.get("response_format"))
    return prompt, render_target(completion)


def choose(requests: Iterable[Mapping[str, Any]], marker: str, mode: str = COMPACT) -> SitePrompt:
    """The site prompt for a training set: compact when every request splits and shares one static part."""
    if mode == FULL:
        return SitePrompt(FULL, marker, None, lean=True)
    digests = Counter((p.digest if (p := split_request(r)) is not None else None) for r in requests)
    if len(digests) != 1 or None in digests:
        return SitePrompt(FULL, marker, None, lean=True)  # several static parts (or none): keep it whole
    return SitePrompt(COMPACT, marker, next(iter(digests)), lean=True)


def lean_json(text: str, response_format: Mapping[str, Any] | None) -> str:
    """A typed answer as compact JSON with keys in schema order; other answers unchanged."""
    if not isinstance(response_format, Mapping) or response_format.get("type") not in ("json_schema", "json_object"):
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    spec = response_format.get("json_schema") if isinstance(response_format.get("json_schema"), Mapping) else {}
    schema = spec.get("schema", {}) if isinstance(spec, Mapping) else {}
    ordered = _in_schema_order(value, schema if isinstance(schema, dict) else {}, schema)
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False)


def _resolve(schema: Any, root: Any, depth: int = 0) -> dict[str, Any]:
    if not isinstance(schema, dict):
        return {}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/") and depth < 32:
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _resolve(target, root, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        branches = [
            b for b in schema.get(key, ()) if isinstance(b, dict) and _resolve(b, root, depth + 1).get("properties")
        ]
        if branches:
            return _resolve(branches[0], root, depth + 1)
    return schema


def _in_schema_order(value: Any, schema: Any, root: Any) -> Any:
    schema = _resolve(schema, root)
    if isinstance(value, dict):
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        keys = [k for k in properties if k in value] + [k for k in value if k not in properties]
        return {k: _in_schema_order(value[k], properties.get(k, {}), root) for k in keys}
    if isinstance(value, list):
        return [_in_schema_order(v, schema.get("items", {}), root) for v in value]
    return value
