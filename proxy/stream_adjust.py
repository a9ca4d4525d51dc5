"""A provider's SSE stream rewritten as OpenAI clients expect it, event by event.

The streamed counterpart of `providers.adjust_response` (see proxy/providers.py for the
gaps and where they were reported):
- Gemini: tool-call deltas without an `index` get one that counts calls across the whole
  stream (`stream_assembly.opens_a_call`: one with an id or a name, or not first in its
  delta, opens the next call; a bare fragment continues the last), and a
  choice that called tools finishes with `tool_calls`, not `stop`, even when the finish
  comes in a later chunk than the calls;
- Anthropic, when JSON output was asked for: a code fence around the answer is removed,
  the opening fence as soon as it is recognisable, the closing one at the end of the choice
  (whitespace and backticks at the end of the text are held back until then).

Events are re-encoded only when something changed; every other byte passes through as it
came, and events split across network reads are reassembled first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from understudy.proxy.providers import needs_adjustment, wants_json
from understudy.proxy.stream_assembly import opens_a_call, sse_data

_encoder = msgspec.json.Encoder()
_EVENT_END = re.compile(rb"\r?\n\r?\n")
_OPENING_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*[ \t]*\r?\n\s*")
_MAYBE_CLOSING = re.compile(r"\s*`{0,3}\s*$")  # what could still turn out to be the closing fence


@dataclass
class _Choice:
    next_call: int = 0  # index the next new index-less tool call gets
    last_call: int | None = None
    called_tools: bool = False
    head: str | None = ""  # content before we know whether it opens with a fence; None once known
    fenced: bool = False
    held: str = ""  # the end of the text that may be a closing fence


@dataclass
class StreamAdjuster:
    provider: str
    strip_fences: bool = False
    _pending: bytes = b""
    _choices: dict[int, _Choice] = field(default_factory=dict)

    @classmethod
    def for_route(cls, provider: str, request: dict[str, Any]) -> StreamAdjuster | None:
        """An adjuster when the provider's streams need one, else None (bytes pass through)."""
        if not needs_adjustment(provider):
            return None
        return cls(provider, strip_fences=provider == "anthropic" and wants_json(request))

    def feed(self, data: bytes) -> bytes:
        """The bytes to send on for `data`: whole events only, the rest waits for the next read."""
        self._pending += data
        out = []
        while (match := _EVENT_END.search(self._pending)) is not None:
            event, self._pending = self._pending[: match.end()], self._pending[match.end() :]
            out.append(self._event(event))
        return b"".join(out)

    def close(self) -> bytes:
        """What is left at the end of the stream (an unterminated last event)."""
        rest, self._pending = self._pending, b""
        return self._event(rest) if rest else b""

    # --- one event -------------------------------------------------------------------------

    def _event(self, event: bytes) -> bytes:
        lines = event.splitlines(keepends=True)
        changed = False
        for i, line in enumerate(lines):
            chunk = sse_data(line)
            if chunk is None:
                continue
            adjusted = self._chunk(chunk) if isinstance(chunk, dict) else chunk
            if adjusted is not chunk:
                ending = line[len(line.rstrip(b"\r\n")) :]
                lines[i] = b"data: " + _encoder.encode(adjusted) + ending
                changed = True
        return b"".join(lines) if changed else event

    def _chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return chunk
        fixed = [self._choice(c) if isinstance(c, dict) else c for c in choices]
        if all(new is old for new, old in zip(fixed, choices)):
            return chunk
        return {**chunk, "choices": fixed}

    def _choice(self, choice: dict[str, Any]) -> dict[str, Any]:
        state = self._choices.setdefault(
            choice.get("index", 0) if isinstance(choice.get("index"), int) else 0, _Choice()
        )
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else None
        out = choice
        if delta is not None and isinstance(delta.get("tool_calls"), list) and delta["tool_calls"]:
            state.called_tools = True
            calls = [self._numbered(state, call, position) for position, call in enumerate(delta["tool_calls"])]
            if any(new is not old for new, old in zip(calls, delta["tool_calls"])):
                out = {**out, "delta": {**delta, "tool_calls": calls}}
        if self.provider == "gemini" and state.called_tools and out.get("finish_reason") == "stop":
            out = {**out, "finish_reason": "tool_calls"}
        if self.strip_fences:
            out = self._unfenced(state, out)
        return out

    @staticmethod
    def _numbered(state: _Choice, call: Any, position: int) -> Any:
        if not isinstance(call, dict):
            return call
        if isinstance(call.get("index"), int):
            state.last_call = call["index"]
            state.next_call = max(state.next_call, call["index"] + 1)
            return call
        if opens_a_call(call, position) or state.last_call is None:
            state.last_call, state.next_call = state.next_call, state.next_call + 1
        return {**call, "index": state.last_call}

    @staticmethod
    def _unfenced(state: _Choice, choice: dict[str, Any]) -> dict[str, Any]:
        delta = found if isinstance(found := choice.get("delta"), dict) else {}
        text = content if isinstance(content := delta.get("content"), str) else ""
        finished = bool(choice.get("finish_reason"))
        emit = text
        if state.head is not None:  # not yet known whether the answer opens with a fence
            head = state.head + text
            opening = _OPENING_FENCE.match(head)
            stripped = head.lstrip()
            if opening is not None:
                state.fenced, state.head, emit = True, None, head[opening.end() :]
            elif stripped and not "```".startswith(stripped[:3]) or finished or "\n" in stripped:
                state.head, emit = None, head  # no fence: everything held so far goes out
            else:
                state.head, emit = head, ""
        if state.head is None and state.fenced:
            text_now = state.held + emit
            held = _MAYBE_CLOSING.search(text_now)
            assert held is not None  # the pattern matches at least the empty string at the end
            if finished:  # the held tail was the closing fence, or plain trailing whitespace
                emit, state.held = (
                    (text_now[: held.start()] if "```" in text_now[held.start() :] else text_now).rstrip(),
                    "",
                )
            else:
                emit, state.held = text_now[: held.start()], text_now[held.start() :]
        if emit == text:
            return choice
        return {**choice, "delta": {**delta, "content": emit}}
