"""Call-site identification: which `by llm()` call (or which task) sent this request.

byLLM builds every request of one call site from the same static parts; only argument
values change (see ../shared/fixtures/byllm/README.md). The first user message reads

    <header: docstring, sem text, or the bare function name>

    <arg> = (<python repr of the value>, '<semstr>')
    <arg> = (...)

and byLLM 0.6 adds a second text part "Schema requirements: ..." derived from the
response schema. The site signature hashes the static part: system text, header,
ordered argument names, the response schema, tool names and temperature. The
"Schema requirements" part is left out because it is a function of the response
schema (already hashed) and byLLM drops it from retries and 0.4 never sends it.

Retries ("Your previous response could not be used ...") and tool-loop steps re-send
the first user turn; they are classified by `turn` and share a `conversation` key with the
first turn. The key leaves out the offered tools (byLLM narrows them to `finish_tool` on
the last step of a tool loop), so the proxy's site registry gives a later turn the site its
first turn got, whatever the later request offers (proxy/site_registry.py). Requests that
do not carry byLLM's system text are generic OpenAI clients: keyed by system text +
response schema + tool names, their user text is never read as argument lines (a line
`name = value` in a user's message is content, not structure). An explicit tag (header
`X-Understudy-Site` or `metadata.understudy_site`) overrides all of this; the byLLM plugin marks
its own tags (`metadata.understudy_site_source = "plugin"`), which alone may take over the
history of the untagged site they replace (proxy/site_registry.py).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from understudy.byllm.prompt import (
    BYLLM_SYSTEM_MARKER,
    PLUGIN_TAG_SOURCE,
    RETRY_MARKER,
    argument_lines,
    first_user_index,
    first_user_text,
    message_text,
    split_prompt,
)
from understudy.byllm.prompt import (
    system_text as system_text_of,
)

UNDERSTUDY_METADATA = ("understudy_site", "understudy_site_source")  # removed before forwarding
_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")
_SLUG_NOISE = re.compile(r"[^a-z0-9]+")
_encoder = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True, slots=True)
class Signature:
    """The static part of a request: equal signatures mean one call site."""

    kind: str  # byllm | generic (how the untagged part was read)
    system_text: str
    header: str | None
    arg_names: tuple[str, ...]
    schema_name: str | None
    schema_digest: str | None
    tool_names: tuple[str, ...]
    temperature: float | None
    tag: str | None = None
    # The tag is the byLLM plugin's exact `<module>.<qualname>`: it may take over the untagged
    # site of the same signature (continuity). A tag a person set names a site of its own.
    tag_from_plugin: bool = False

    @property
    def site_id(self) -> str:
        if self.tag is not None:
            return _digest("explicit", self.tag)
        return self.untagged_site_id

    @property
    def untagged_site_id(self) -> str:
        """The id the same request would get without its tag (for continuity with old calls)."""
        return _digest(
            self.kind,
            self.system_text,
            self.header or "",
            ",".join(self.arg_names),
            self.schema_digest or "",
            ",".join(self.tool_names),
            repr(self.temperature),
        )

    def default_name(self, caller_name: str | None) -> tuple[str, str]:
        """A readable name and where it came from (caller | explicit | function | docstring | system)."""
        if self.tag is not None:
            return self.tag, "explicit"
        if caller_name:
            return caller_name, "caller"
        returns = self.schema_name or "str"
        if self.header and _IDENTIFIER.match(self.header):
            return self.header, "function"
        if self.header:
            return f"{returns}:{_slug(self.header)}", "docstring"
        return f"{returns}:{_slug(self.system_text) or 'chat'}", "system"


@dataclass(frozen=True, slots=True)
class Identification:
    site_id: str
    signature: Signature
    turn: str  # first | retry | tool_step | followup
    conversation: str  # same key for a first turn and its retries / tool steps
    caller_name: str | None


class RequestShapeError(ValueError):
    """The body has no user message to identify a site from."""


def identify(body: dict[str, Any], explicit_tag: str | None = None) -> Identification:
    messages = body["messages"]
    system_text = system_text_of(messages)
    user_index = first_user_index(messages)
    first_user = first_user_text(messages[user_index]) if user_index is not None else ""

    metadata = found if isinstance(found := body.get("metadata"), dict) else {}
    tag = explicit_tag or metadata.get("understudy_site") or None
    from_plugin = (
        bool(tag)
        and metadata.get("understudy_site_source") == PLUGIN_TAG_SOURCE
        and str(tag) == str(metadata.get("understudy_site"))
    )
    caller_name = metadata.get("jac_caller_name") or None

    header, arg_names, kind = _split_prompt(first_user, system_text)
    schema_name, schema_digest = _schema_parts(body.get("response_format"))
    signature = Signature(
        kind=kind,
        system_text=system_text,
        header=header,
        arg_names=arg_names,
        schema_name=schema_name,
        schema_digest=schema_digest,
        tool_names=_tool_names(body.get("tools")),
        temperature=_number_or_none(body.get("temperature")),
        tag=str(tag) if tag else None,
        tag_from_plugin=from_plugin,
    )
    later = messages[user_index + 1 :] if user_index is not None else []
    site_id = signature.site_id
    return Identification(
        site_id=site_id,
        signature=signature,
        turn=_turn_of(later),
        # no tool names: a later step may offer fewer tools than the first turn did
        conversation=_digest(
            signature.tag or "",
            signature.kind,
            system_text,
            first_user,
            signature.schema_digest or "",
            repr(signature.temperature),
        ),
        caller_name=caller_name,
    )


def _split_prompt(text: str, system_text: str) -> tuple[str | None, tuple[str, ...], str]:
    """(header, argument names, kind) from byLLM's first user message; generic without byLLM's system text."""
    if BYLLM_SYSTEM_MARKER not in system_text:
        return None, (), "generic"
    header, block = split_prompt(text)
    if block is not None:
        return header, tuple(name for name, _ in argument_lines(block)), "byllm"
    # A byLLM function without arguments: the whole message is the header.
    return text.strip(), (), "byllm"


def _turn_of(later_messages: list[dict[str, Any]]) -> str:
    if not later_messages:
        return "first"
    if any(m.get("role") == "tool" or m.get("tool_calls") for m in later_messages):
        return "tool_step"
    if any(m.get("role") == "user" and message_text(m).startswith(RETRY_MARKER) for m in later_messages):
        return "retry"
    return "followup"


def _schema_parts(response_format: Any) -> tuple[str | None, str | None]:
    if not isinstance(response_format, dict):
        return None, None
    json_schema = response_format.get("json_schema")
    name = json_schema.get("name") if isinstance(json_schema, dict) else response_format.get("type")
    return (str(name) if name else None), _digest(_encoder.encode(response_format).decode())


def _tool_names(tools: Any) -> tuple[str, ...]:
    if not isinstance(tools, list):
        return ()
    names = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("name"):
            names.append(str(function["name"]))
    return tuple(names)


def _number_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=6).hexdigest()


def _slug(text: str, limit: int = 40) -> str:
    return _SLUG_NOISE.sub("-", text.lower()).strip("-")[:limit].rstrip("-")
