from understudy import wire
from understudy.inference.prompt_format import END_MARKER, STOP_SEQUENCES, render_prompt, render_target
from understudy.inference.site_prompt import render_training_pair

SCHEMA_RF = {
    "type": "json_schema",
    "json_schema": {
        "name": "P",
        "strict": True,
        "schema": {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}},
    },
}


def test_plain_chat_layout():
    prompt = render_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert prompt == "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"


def test_schema_compact_in_given_order_before_assistant():
    prompt = render_prompt([{"role": "user", "content": "x"}], SCHEMA_RF)
    assert prompt.endswith(
        '<|schema|>\n{"type":"object","properties":{"b":{"type":"integer"},"a":{"type":"string"}}}'
        "<|end|>\n<|assistant|>\n"
    )
    assert wire.response_schema(SCHEMA_RF)["properties"]["b"] == {"type": "integer"}


def test_json_object_and_text_formats():
    assert "<|schema|>\njson<|end|>" in render_prompt([], {"type": "json_object"})
    assert "<|schema|>" not in render_prompt([], {"type": "text"})
    # JSON mode asks for an object: decoding, the gate and evaluation all read it so (understudy.wire).
    assert wire.response_schema({"type": "json_object"}) == {"type": "object"}
    assert wire.response_schema({"type": "text"}) is None


def test_deterministic_and_unicode_kept():
    msgs = [{"role": "user", "content": "héllo ✓"}]
    assert render_prompt(msgs, SCHEMA_RF) == render_prompt(msgs, SCHEMA_RF)
    assert "héllo ✓" in render_prompt(msgs)


def test_content_parts_tools_and_tool_calls():
    tools = [
        {"type": "function", "function": {"name": "roll", "description": "Roll dice", "parameters": {"type": "object"}}}
    ]
    msgs = [
        {"role": "developer", "content": "sys"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "roll", "arguments": '{"n": 2}'}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "7"},
    ]
    prompt = render_prompt(msgs, tools=tools)
    assert prompt.startswith("<|system|>\nsys<|end|>\n<|user|>\nlook\n[image]<|end|>\n")
    assert '<|assistant|>\n<|tool_calls|>[{"name":"roll","arguments":{"n":2}}]<|end|>\n' in prompt
    assert "<|tool|>\n7<|end|>\n" in prompt
    assert '<|tools|>\n[{"name":"roll","description":"Roll dice","parameters":{"type":"object"}}]' in prompt
    assert prompt.endswith("<|assistant|>\n")


def test_target_and_stops():
    assert render_target('{"a":1}') == '{"a":1}' + END_MARKER
    assert END_MARKER in STOP_SEQUENCES
    ex = {"messages": [{"role": "user", "content": "q"}], "completion": "a"}
    prompt, target = render_training_pair(ex)
    assert prompt.endswith("<|assistant|>\n") and target == "a<|end|>"
