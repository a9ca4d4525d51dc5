"""Store rows for tests that write to the store directly: typed rows (understudy.rows) with the
fields a test does not care about filled in, so a test names only what it is about; and what a
training job registers, for a test that needs a site with a version."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from understudy.rows import CallRow, SiteRow

ANSWER = '{"choices": [{"message": {"role": "assistant", "content": "{}"}, "finish_reason": "stop"}]}'


def site_row(site_id: str, name: str = "site", **fields: Any) -> SiteRow:
    """A byLLM function site (`schema_name` "Color" unless given)."""
    values: dict[str, Any] = {
        "name_source": "function",
        "kind": "byllm",
        "system_text": "",
        "header": None,
        "arg_names": ["x"],
        "schema_name": "Color",
        "tool_names": [],
        "temperature": None,
        "created_at": datetime.now(UTC),
    }
    values.update(fields)
    return SiteRow(id=site_id, name=name, **values)


def call_row(call_id: str, site_id: str, **fields: Any) -> CallRow:
    """An answered upstream call of `site_id` (its conversation its own id), stamped now."""
    values: dict[str, Any] = {
        "ts": datetime.now(UTC),
        "model": "m",
        "served_by": "upstream",
        "stream": False,
        "turn": "first",
        "conversation": call_id,
        "retry_of": None,
        "request": '{"messages": []}',
        "response": ANSWER,
        "status": 200,
        "error": None,
        "latency_ms": 12.5,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": 0.001,
        "valid": True,
    }
    values.update(fields)
    return CallRow(id=call_id, site_id=site_id, **values)


def training_result(validator_pass_rate: float | None = 0.9, **fields: Any) -> dict[str, Any]:
    """What a training job hands `register_version`: a verified adapter and its held-out rates."""
    values: dict[str, Any] = {
        "verified": True,
        "error": None,
        "adapter_path": "/a.gguf",
        "base_gguf": "/b.gguf",
        "config": {},
        "metrics": {"heldout": {"validator_pass_rate": validator_pass_rate, "parse_valid_rate": 1.0}},
    }
    values.update(fields)
    return values
