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
