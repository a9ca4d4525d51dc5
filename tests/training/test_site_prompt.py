"""Site-compact prompts and lean answers: round trips on every byLLM capture, one rendering for
training and serving, the full rendering where the static part cannot be trusted, and prefix
reuse that changes nothing but the speed."""

from __future__ import annotations

import json

import pytest

from tests.proxy.captures import capture_files, load_capture
from understudy.inference.local_generate import LocalGenerator
from understudy.inference.local_model import LocalModels, PromptMismatch, Variant
from understudy.inference.prompt_format import render_prompt
from understudy.inference.site_prompt import (
    COMPACT,
    FULL,
    SitePrompt,
    choose,
    compact_prompt,
    expand,
    lean_json,
    render_request,
    render_training_pair,
    render_with_prefix,
    split_request,
)
from understudy.proxy.callsite import identify


def all_captured_requests() -> list[tuple[str, dict]]:
    return [
        (f"{path.stem}#{record['seq']}", record["request"]["body"])
        for path in capture_files()
        for record in load_capture(path)
    ]


CAPTURED = all_captured_requests()


@pytest.mark.parametrize(("name", "body"), CAPTURED, ids=[name for name, _ in CAPTURED])
def test_every_capture_splits_and_round_trips(name, body):
    parts = split_request(body)
    assert parts is not None
    assert expand(parts) == {
        "messages": body["messages"],
        "response_format": body.get("response_format"),
        "tools": body.get("tools") or None,
    }
    # What varies is in the compact prompt; what is static is not.
    prompt = compact_prompt(parts, "site")
    for name_, value in parts.varying.get("args", []):
        assert (
            f"{name_} = {value}\n" in prompt
            or prompt.endswith(f"{name_} = {value}<|end|>\n<|assistant|>\n")
            or f"{name_} = {value}<|end|>" in prompt
        )
    if identify(body).turn == "first":  # a retry's correction message is kept whole: it varies
        assert "This is a task you must complete" not in prompt and "Schema requirements" not in prompt


def test_retries_and_tool_steps_share_their_sites_static_part_and_keep_what_varies():
    by_site: dict[str, set[str]] = {}
    kinds = set()
    for _, body in CAPTURED:
        ident = identify(body)
        parts = split_request(body)
        if ident.signature.tool_names:
            continue  # tool sites are never answered locally
        by_site.setdefault(ident.site_id, set()).add(parts.digest)
        kinds.add(ident.turn)
        if ident.turn == "retry":
            prompt = compact_prompt(parts, "s")
            assert "Your previous response could not be used" in prompt  # the correction is kept
    assert {"first", "retry"} <= kinds
    assert all(len(digests) == 1 for digests in by_site.values()), by_site


def test_tool_results_and_assistant_tool_calls_are_kept():
    body = next(b for _, b in CAPTURED if any(m.get("role") == "tool" for m in b["messages"]))
    prompt = compact_prompt(split_request(body), "s")
    assert "<|tool|>" in prompt and "<|tool_calls|>" in prompt


def level_capture() -> dict:
    return next(
        b for _, b in CAPTURED if ((b.get("response_format") or {}).get("json_schema") or {}).get("name") == "Level"
    )


def test_compact_prompts_are_a_fraction_of_the_full_ones():
    body = level_capture()
    full = render_prompt(body["messages"], body["response_format"])
    site = choose([body], marker=identify(body).site_id)
    compact = render_request(body, site)
    assert site.mode == COMPACT and len(compact) * 4 < len(full)
    assert compact.startswith(f"<|site|>\n{identify(body).site_id}<|end|>\n<|args|>\n")


def test_training_and_serving_render_the_same_text():
    body = level_capture()
    site = choose([body], marker="abc")
    example = {**body, "tools": None, "completion": '{"name": "x", "difficulty": 2}'}
    prompt, target = render_training_pair(example, site)
    assert prompt == render_request(body, site) == render_with_prefix(body, site)[0]
    assert target == '{"name":"x","difficulty":2}<|end|>'  # lean: compact, in schema order


def test_a_request_with_another_static_part_is_not_rendered_compactly():
    body = level_capture()
    site = choose([body], marker="abc")
    other = json.loads(json.dumps(body))
    other["messages"][0]["content"] += " Be terse."
    assert render_request(other, site) is None
    with pytest.raises(PromptMismatch):
        LocalModels("unused.gguf").complete_sync(other, Variant(None, site))
    # A site whose examples do not share one static part keeps the full rendering.
    mixed = choose([body, other], marker="abc")
    assert mixed.mode == FULL and render_request(other, mixed) == render_prompt(
        other["messages"], other["response_format"]
    )
    assert choose([body], marker="abc", mode=FULL).mode == FULL


def test_lean_json_orders_keys_as_the_schema_does_and_drops_whitespace():
    rf = {
        "type": "json_schema",
        "json_schema": {
            "name": "P",
            "schema": {
                "type": "object",
                "properties": {"b": {"type": "integer"}, "a": {"$ref": "#/$defs/A"}},
                "$defs": {"A": {"type": "object", "properties": {"y": {}, "x": {}}}},
            },
        },
    }
    assert (
        lean_json('{"a": {"x": 1, "y": 2}, "b": 3, "extra": [1, 2]}', rf) == '{"b":3,"a":{"y":2,"x":1},"extra":[1,2]}'
    )
    assert lean_json("not json", rf) == "not json"
    assert lean_json('{"a": 1}', None) == '{"a": 1}'  # text sites keep their answers
    assert SitePrompt.from_dict({}) == SitePrompt(FULL, "", None, False)  # versions from before compact prompts


# --- prefix reuse ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator(tiny_llama):
    with LocalGenerator(tiny_llama[1], n_ctx=512, n_threads=2) as gen:
        yield gen


def test_a_restored_prefix_gives_token_identical_output(generator, tiny_llama):
    body = level_capture()
    site = choose([body], marker="site-a")
    prompt, prefix = render_with_prefix(body, site)
    cold = generator.complete(prompt, None, max_tokens=24)
    generator.llm.reset()
    first = generator.complete(prompt, None, max_tokens=24, prefix=prefix)  # evaluates and keeps the prefix
    other = generator.complete("<|user|>\nsomething else entirely<|end|>\n<|assistant|>\n", None, max_tokens=8)
    assert other.text is not None
    hits = generator.prefix_hits
    restored = generator.complete(prompt, None, max_tokens=24, prefix=prefix)  # restored after another prompt
    assert generator.prefix_hits == hits + 1
    assert cold.text == first.text == restored.text and cold.confidence == pytest.approx(restored.confidence)


def test_a_prefix_state_is_never_reused_under_another_adapter(generator, tiny_llama, tmp_path):
    from understudy.training.config import TrainConfig
    from understudy.training.gguf_adapter import export_gguf_adapter
    from understudy.training.train import train

    hf_dir, gguf = tiny_llama
    example = {
        "messages": [{"role": "user", "content": "color?"}],
        "response_format": None,
        "tools": None,
        "completion": "teal",
    }
    config = TrainConfig(
        base_model=str(hf_dir), base_gguf=str(gguf), lr=1e-2, max_steps=30, batch_size=1, lora_dropout=0.0, device="cpu"
    )
    train(config, [example], [example], tmp_path / "peft", progress=False)
    adapter = str(export_gguf_adapter(tmp_path / "peft", tmp_path / "a.gguf", gguf))
    prompt = "<|site|>\nx<|end|>\n<|user|>\ncolor?<|end|>\n<|assistant|>\n"
    prefix = "<|site|>\nx<|end|>\n"
    base_cold = generator.complete(prompt, None, max_tokens=6)
    adapted_cold = generator.complete(prompt, adapter, max_tokens=6)
    assert base_cold.text != adapted_cold.text  # the adapter changes the answer
    generator.complete(prompt, None, max_tokens=6, prefix=prefix)  # base: prefix kept
    hits = generator.prefix_hits
    adapted = generator.complete(prompt, adapter, max_tokens=6, prefix=prefix)  # must not use the base's state
    assert generator.prefix_hits == hits and adapted.text == adapted_cold.text
    again = generator.complete(prompt, adapter, max_tokens=6, prefix=prefix)  # other prompt state, its own prefix
    base_again = generator.complete(prompt, None, max_tokens=6, prefix=prefix)
    assert again.text == adapted_cold.text and base_again.text == base_cold.text
