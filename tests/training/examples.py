"""Example builders shared by the training tests."""

from __future__ import annotations


def make_example(question: str, completion: str, response_format=None, system=None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    return {"messages": messages, "response_format": response_format, "tools": None, "completion": completion}


COLOR_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "Color",
        "schema": {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]},
    },
}


def snapshot_rows(splits: list[tuple[dict, str]], site_id: str = "site") -> list[dict]:
    """Rows for `training.snapshots.write_snapshot`: each (example, "train" | "eval") as a recorded,
    parse-valid call of `site_id`."""
    return [
        {
            **example,
            "call_id": f"c{i}",
            "site_id": site_id,
            "provider_model": "m",
            "parse_valid": True,
            "validator_passed": None,
            "split": split,
        }
        for i, (example, split) in enumerate(splits)
    ]
