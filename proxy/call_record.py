"""Turning what the request path captured into a `calls` row (runs on the recorder thread).

Everything here is deliberately kept off the request path: decoding the upstream
body, reassembling streams, schema validation, cost. The request path only hands over
bytes and the already-decoded request dict.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import msgspec

from understudy import wire
from understudy.client_keys import KEY_PREFIX
from understudy.pricing import PriceTable
from understudy.proxy.callsite import Identification
from understudy.proxy.stream_assembly import assemble_completion
from understudy.rows import CallRow

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
MASK = "[redacted]"
# Redaction is narrowed to credentials. A key called `password`, `key` or `token` in a body is
# data (a JSON schema property, a tool argument): dropping it made training render a different
# prompt than serving. What is masked: the known secret values (upstream keys, the admin token)
# wherever they appear, anything shaped like an Understudy client key (the proxy keeps only their
# hashes, so it cannot list them), and the string value of a header-named field (a client or an
# upstream echoing request headers).
_CLIENT_KEY = re.compile(rf"(?<![A-Za-z0-9_-]){re.escape(KEY_PREFIX)}[A-Za-z0-9_-]{{43}}(?![A-Za-z0-9_-])")
_HEADER_FIELD = re.compile(
    r'"(authorization|proxy-authorization|x-api-key|api-key|x-goog-api-key)"(\s*:\s*)"(?:[^"\\]|\\.)*"', re.IGNORECASE
)
# A cheap test run before that regex (most of a row's cost): every header name above contains
# one of these parts. The test lowers the text's UTF-8 bytes (ASCII letters only, fast where
# str.lower() on non-ASCII text is not); the regex's IGNORECASE also folds three non-ASCII
# letters onto ASCII ones (U+0130 and U+0131 onto "i", the Kelvin sign onto "k"), so text
# holding any of them always goes to the regex.
_HEADER_NAME_PARTS = (b"authorization", b"api-key")
_FOLDED_ONTO_ASCII = ("\u0130", "\u0131", "\u212a")


@dataclass(slots=True)
class PendingCall:
    """What the request path hands to the recorder for one finished call."""

    id: str
    ts: float  # time.time() when the request arrived
    identification: Identification
    request: dict[str, Any]
    served_by: str
    stream: bool
    status: int
    latency_ms: float
    response_body: bytes | None = None  # the upstream body, or the concatenated SSE bytes
    error: str | None = None
    response_obj: dict[str, Any] | None = field(default=None)  # the completion, when built or decoded already
    provider: str | None = None  # openai | anthropic | gemini | openai-compatible | local
    upstream_model: str | None = None  # the model the upstream was asked for (after aliases)
    price: tuple[float, float] | None = None  # the route's own price, overriding the table
    purpose: str = "client"  # client | drift | self_check (upstream calls the proxy makes itself)
    client: str | None = None  # the client key's name (never the key); None when keys are off
    sse: bool = False  # response_body holds the relayed SSE bytes (a stream that started, complete or not)
    attempts: int = 0  # times the upstream was asked (retries + 1); 0: it was not asked
    retried_for: str | None = None  # why the earlier attempts were retried ("http 429; ReadTimeout")
    local_tries: int | None = None  # local draws made for this call (inference.checked_sampling); None: none made


def mask_text(text: str, secrets: tuple[str, ...]) -> str:
    """`text` (JSON or plain) with every credential masked; the same object when there was none."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
        escaped = _as_in_json(secret)
        if escaped != secret and escaped in text:  # the secret as it reads inside a JSON string
            text = text.replace(escaped, MASK)
    if KEY_PREFIX in text:
        text = _CLIENT_KEY.sub(MASK, text)
    if '"' in text and _may_name_a_header(text) and _HEADER_FIELD.search(text):
        text = _HEADER_FIELD.sub(lambda m: f'"{m.group(1)}"{m.group(2)}"{MASK}"', text)
    return text


@lru_cache(maxsize=64)
def _as_in_json(secret: str) -> str:
    """The secret as it reads inside a JSON string (the secrets are few and fixed: cached)."""
    return json.dumps(secret)[1:-1] if secret else ""


def _may_name_a_header(text: str) -> bool:
    """False only where `_HEADER_FIELD` cannot match (a prefilter: True may still not match)."""
    if not text.isascii() and any(letter in text for letter in _FOLDED_ONTO_ASCII):
        return True
    lowered = text.encode("utf-8", "surrogatepass").lower()
    return any(part in lowered for part in _HEADER_NAME_PARTS)


def mask_bytes(body: bytes, secrets: tuple[str, ...]) -> bytes:
    text = body.decode("utf-8", "surrogateescape")
    masked = mask_text(text, secrets)
    return body if masked is text else masked.encode("utf-8", "surrogateescape")


def redact(value: Any, secrets: tuple[str, ...]) -> Any:
    """A copy of a JSON value with every credential masked (keys and structure kept)."""
    text = _encoder.encode(value).decode()
    masked = mask_text(text, secrets)
    return value if masked is text else json.loads(masked)


def _token_count(value: Any) -> int | None:
    """A usage count as the store keeps it: a non-negative int64, else unknown (an upstream's
    `"prompt_tokens": 1e30` or `"many"` must not make the call's row unstorable)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        return None
    return value


def completion_of(call: PendingCall) -> dict[str, Any] | None:
    if call.response_obj is not None:
        return call.response_obj
    if not call.response_body:
        return None
    if call.stream and (call.status == 200 or call.sse):
        return assemble_completion(call.response_body)
    try:
        decoded = _decoder.decode(call.response_body)
    except msgspec.DecodeError:
        return {"raw": call.response_body[:4096].decode("utf-8", "replace")}
    return decoded if isinstance(decoded, dict) else {"raw": decoded}


def first_content(completion: dict[str, Any] | None) -> str | None:
    if completion is None:
        return None
    try:
        return completion["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


def typed_output_valid(request: dict[str, Any], completion: dict[str, Any] | None) -> bool | None:
    """Did the answer parse against the request's JSON schema? None when the call is untyped (understudy.wire)."""
    return wire.fits(first_content(completion), request.get("response_format"))


def to_row(
    call: PendingCall,
    call_id: str,
    retry_of: str | None,
    prices: PriceTable,
    secrets: tuple[str, ...],
    completion: dict[str, Any] | None = None,
) -> CallRow:
    """The `calls` row (`completion`: `completion_of(call)`, if already built)."""
    completion = completion if completion is not None else completion_of(call)
    usage = (completion or {}).get("usage") or {}
    prompt_tokens = _token_count(usage.get("prompt_tokens")) if isinstance(usage, dict) else None
    completion_tokens = _token_count(usage.get("completion_tokens")) if isinstance(usage, dict) else None
    model = call.request.get("model")
    ok = 200 <= call.status < 300
    # A broken stream was still generated (and billed) up to where it broke: it is counted too.
    billed = ok or (call.sse and call.served_by == "upstream")
    estimated = None if prompt_tokens is None else False
    if prompt_tokens is None and billed and call.served_by == "upstream" and completion is not None:
        prompt_tokens, completion_tokens = estimate_usage(call.request, completion)
        estimated = True
    priced_model = call.upstream_model or model
    cost: float | None
    if call.price == (0.0, 0.0):
        cost = 0.0  # a free upstream costs nothing, tokens counted or not
    elif call.price is not None and prompt_tokens is not None:
        cost = (prompt_tokens * call.price[0] + (completion_tokens or 0) * call.price[1]) / 1_000_000
    else:
        cost = prices.cost(priced_model, prompt_tokens, completion_tokens)
    return CallRow(
        id=call_id,
        ts=datetime.fromtimestamp(call.ts, UTC),
        site_id=call.identification.site_id,
        model=model,
        served_by=call.served_by,
        stream=call.stream,
        turn=call.identification.turn,
        conversation=call.identification.conversation,
        retry_of=retry_of,
        request=mask_text(_encoder.encode(call.request).decode(), secrets),
        response=mask_text(_encoder.encode(completion).decode(), secrets) if completion is not None else None,
        status=call.status,
        error=mask_text(call.error, secrets) if call.error else call.error,
        latency_ms=call.latency_ms,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost if billed and call.served_by == "upstream" else 0.0 if ok else None,
        valid=typed_output_valid(call.request, completion) if ok else None,
        provider=call.provider,
        upstream_model=call.upstream_model,
        purpose=call.purpose,
        client=call.client,
        usage_estimated=estimated,
        attempts=call.attempts or None,
        retried_for=call.retried_for,
        local_tries=call.local_tries,
    )


# Token estimate for answers that came without usage (an upstream that ignores
# `stream_options.include_usage`, a stream cut before its usage chunk). The upstream's
# tokenizer is not known here (and tiktoken's files are a download), so: about 4 characters
# a token, OpenAI's rule of thumb for English, plus OpenAI's per-message overhead (3 tokens
# a message, 3 to prime the reply). Rows counted this way have `usage_estimated` set.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3


def estimate_usage(request: dict[str, Any], completion: dict[str, Any]) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) estimated from the text of the request and the answer."""
    messages = request.get("messages")
    if not isinstance(messages, list):
        messages = []
    prompt_chars: int = sum(_text_chars(message) for message in messages)
    for extra in ("tools", "response_format"):
        if request.get(extra):
            prompt_chars += len(_encoder.encode(request[extra]))
    answer_chars = 0
    for choice in completion.get("choices") or []:
        if isinstance(choice, dict):
            answer_chars += _text_chars(choice.get("message"))
    prompt = -(-prompt_chars // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * (len(messages) + 1)
    return prompt, -(-answer_chars // CHARS_PER_TOKEN)


def _text_chars(message: Any) -> int:
    """Characters of a message's text: content (string or text parts), name, tool calls."""
    if not isinstance(message, dict):
        return 0
    content = message.get("content")
    chars = len(content) if isinstance(content, str) else 0
    if isinstance(content, list):
        chars += sum(
            len(part["text"]) for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    if isinstance(message.get("name"), str):
        chars += len(message["name"])
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            chars += sum(len(function[k]) for k in ("name", "arguments") if isinstance(function.get(k), str))
    return chars
