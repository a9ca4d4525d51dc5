"""What an upstream stream becomes on its way to the client, and how it ended.

- Whole events only: bytes go to the client up to the last complete SSE event of each read,
  so when the upstream breaks mid-event the client never holds half a JSON chunk; it gets
  the events that were complete, then an `error` event (`error_event`) and the end of the
  stream without `[DONE]`, which the OpenAI SDKs raise as an APIError.
- Usage on every stream: when the client did not ask for `stream_options.include_usage`
  the proxy asks for it anyway (`usage_requested`), so streamed calls record the upstream's
  own token counts, exactly as non-streamed ones do (LiteLLM and Helicone do the same), and
  takes the usage back out of what the client receives: the usage-only last chunk is dropped
  and the `"usage": null` every other chunk then carries is removed, so the client sees the
  stream it asked for. The recorded bytes keep the usage.
- Complete or not: a stream is complete when it ends with `data: [DONE]`, or, for servers
  that never send `[DONE]`, when every choice reached a `finish_reason`. Anything else that
  ends (a clean close mid-answer, a reset, a stall) is a broken stream, recorded as failed.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from understudy.proxy.errors import error_body
from understudy.proxy.stream_adjust import StreamAdjuster
from understudy.proxy.stream_assembly import assemble_completion, sse_data

_encoder = msgspec.json.Encoder()
_DONE_AT_END = re.compile(rb"(?:^|\n)data: ?\[DONE\]\s*$")
# `"usage": null` as the key after another (or the first one): a quote right after `,` or `{`
# is JSON structure, never inside a string (quotes in strings are escaped), so this is exact.
_NULL_USAGE = (b',"usage":null', b', "usage": null', b'"usage":null,', b'"usage": null, ')


def usage_requested(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The request asking for the usage chunk, when it is a stream whose client did not ask; else None."""
    if payload.get("stream") is not True:
        return None
    options = payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None
    return {**payload, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}


def error_event(message: str, code: str) -> bytes:
    """An SSE event carrying an OpenAI-shaped error, the way OpenAI reports a failure mid-stream."""
    return b"data: " + error_body(message, type="upstream_error", code=code) + b"\n\n"


class StreamWatch:
    """Feeds an upstream stream through: `feed` returns what the client gets now; `recorded`
    is what the call row is built from (the provider-adjusted bytes, usage included)."""

    def __init__(self, adjuster: StreamAdjuster | None = None, strip_usage: bool = False):
        self.adjuster = adjuster
        self.strip_usage = strip_usage
        self.recorded: list[bytes] = []
        self.sent_any = False  # a byte of the body went to the client
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        if self.adjuster is not None:
            data = self.adjuster.feed(data)
        if not data:
            return b""
        self.recorded.append(data)
        return self._out(self._whole_events(data))

    def finish(self) -> bytes:
        """At a clean end of the upstream stream: the rest (an unterminated last event)."""
        if self.adjuster is not None and (rest := self.adjuster.close()):
            self.recorded.append(rest)
            self._pending += rest
        rest, self._pending = self._pending, b""
        return self._out(rest)

    def complete(self) -> bool:
        """Whether the stream so far is a whole answer (see the module docstring)."""
        tail = b"".join(self.recorded[-3:])[-256:]
        if _DONE_AT_END.search(tail):
            return True
        completion = assemble_completion(b"".join(self.recorded))
        choices = (completion or {}).get("choices") or []
        return bool(choices) and all(choice.get("finish_reason") for choice in choices)

    def body(self) -> bytes:
        return b"".join(self.recorded)

    # ---- framing and usage ----

    def _whole_events(self, data: bytes) -> bytes:
        buffer = self._pending + data if self._pending else data
        lf, crlf = buffer.rfind(b"\n\n"), buffer.rfind(b"\r\n\r\n")
        cut = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
        self._pending = buffer[cut:]
        return buffer[:cut]

    def _out(self, events: bytes) -> bytes:
        if events and self.strip_usage and b'"usage"' in events:
            events = _without_usage(events)
        if events:
            self.sent_any = True
        return events


def _without_usage(events: bytes) -> bytes:
    for pattern in _NULL_USAGE:
        events = events.replace(pattern, b"")
    if b'"usage"' not in events:
        return events
    kept = []
    for event in re.split(rb"(?<=\n\n)|(?<=\r\n\r\n)", events):
        if b'"usage"' in event:
            event = _event_without_usage(event)
        if event:
            kept.append(event)
    return b"".join(kept)


def _event_without_usage(event: bytes) -> bytes:
    """The event with its usage taken out; nothing when it carried only usage (no choices)."""
    lines = event.splitlines(keepends=True)
    for i, line in enumerate(lines):
        chunk = sse_data(line)
        if not isinstance(chunk, dict) or "usage" not in chunk:
            continue
        if not chunk.get("choices"):
            return b""
        ending = line[len(line.rstrip(b"\r\n")) :]
        lines[i] = b"data: " + _encoder.encode({k: v for k, v in chunk.items() if k != "usage"}) + ending
    return b"".join(lines)
