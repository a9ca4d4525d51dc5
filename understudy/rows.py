"""The rows the recorder writes, typed: one NamedTuple per table, its fields the table's columns.

A row is still a tuple (the store inserts it as one, into DuckDB through Arrow or PostgreSQL
through COPY), but it is built and read by name, so a column added or moved cannot shift the
others unnoticed. The store's column lists (`store.CALL_COLUMNS`, ...) are these fields.

Columns added after a table's first release have a default (NULL): a row spilled to
`failed-writes.jsonl` by an older release, with fewer values, is restored as a full row.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple


class CallRow(NamedTuple):
    """One call the proxy answered or made (`calls`)."""

    id: str
    ts: datetime
    site_id: str
    model: str | None
    served_by: str  # upstream | local:SITE@vN
    stream: bool
    turn: str | None
    conversation: str | None
    retry_of: str | None  # the call this one repeats (a client retry), if any
    request: str  # the request body as JSON, secrets masked
    response: str | None  # the completion as JSON, secrets masked
    status: int
    error: str | None
    latency_ms: float
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    valid: bool | None  # a typed answer fits its schema (understudy.wire); None: untyped or failed
    provider: str | None = None
    upstream_model: str | None = None
    purpose: str = "client"  # client | drift | self_check
    client: str | None = None  # the client key's name
    usage_estimated: bool | None = None
    attempts: int | None = None
    retried_for: str | None = None
    local_tries: int | None = None


class ShadowRow(NamedTuple):
    """One scored pair of a local and an upstream answer (`shadow_results`)."""

    call_id: str
    site_id: str
    version: int | None
    ts: datetime
    score: float | None
    components: str  # the score's parts as JSON
    comparable: bool
    local_valid: bool | None
    local_latency_ms: float | None
    upstream_latency_ms: float | None
    local_output: str | None
    upstream_valid: bool | None = None
    phase: str = "shadow"  # shadow | drift
    local_confidence: float | None = None
    local_tries: int | None = None


class SelfAgreementRow(NamedTuple):
    """The upstream's two answers to one request, scored against each other (`self_agreement`)."""

    call_id: str
    second_call_id: str
    site_id: str
    ts: datetime
    score: float | None
    components: str
    comparable: bool
    first_valid: bool | None
    second_valid: bool | None


class SiteRow(NamedTuple):
    """A call site, as first seen (`sites`)."""

    id: str
    name: str
    name_source: str  # system | tag | explicit | user
    kind: str
    system_text: str
    header: str | None
    arg_names: list[str]
    schema_name: str | None
    tool_names: list[str]
    temperature: float | None
    created_at: datetime
    tag: str | None = None
