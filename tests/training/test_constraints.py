"""The constraint compiler (inference.constraints) and constrained decoding (inference.decoding).

Real parts only: each schema keyword is checked by feeding the tokens of a valid and of a
violating answer to an llguidance matcher on the tiny Llama's llama.cpp vocabulary (byte
fallback: it spells any text); decoding runs the tiny random model, whose unconstrained
answers are noise, so a valid constrained answer is the constraint's doing.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from understudy.inference.constraints import ConstraintError, LlamaVocab, compile_schema
from understudy.inference.local_generate import LocalGenerator

PROMPT = "<|user|>\nGenerate a dungeon level.<|end|>\n<|assistant|>\n"


@pytest.fixture(scope="module")
def generator(tiny_llama):
    # one thread: the tiny model needs no more, and two spin-wait badly when another process holds a core
    with LocalGenerator(tiny_llama[1], n_ctx=512, n_threads=1) as gen:
        yield gen


@pytest.fixture(scope="module")
def vocab(generator) -> LlamaVocab:
    return generator._decoder.vocabulary()


def refused_at(generator, vocab, constraint, text: str) -> int | None:
    """None if `text` is a complete answer under `constraint`; else the index of the first refused
    token (len(tokens) when every token passes but the answer may not end there)."""
    matcher = vocab.matcher(constraint)
    tokens = generator.llm.tokenize(text.encode(), add_bos=False, special=False)
    consumed = matcher.try_consume_tokens(tokens)
    if consumed < len(tokens):
        return consumed
    return None if matcher.is_accepting() else len(tokens)


def obj(**properties) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties)}


DEFS = {
    "$defs": {"Pos": obj(x={"type": "integer", "minimum": 0, "maximum": 9}, y={"type": "integer"})},
    **obj(player={"$ref": "#/$defs/Pos"}),
}

# (name, schema, valid answer, violating answer, does JSON Schema itself reject the violation?)
KEYWORDS = [
    ("integer minimum", obj(n={"type": "integer", "minimum": 2}), '{"n": 2}', '{"n": 1}', True),
    ("integer maximum", obj(n={"type": "integer", "maximum": 3}), '{"n": 3}', '{"n": 99}', True),
    ("integer exclusiveMinimum", obj(n={"type": "integer", "exclusiveMinimum": 0}), '{"n": 1}', '{"n": 0}', True),
    ("integer exclusiveMaximum", obj(n={"type": "integer", "exclusiveMaximum": 3}), '{"n": 2}', '{"n": 3}', True),
    ("number minimum", obj(v={"type": "number", "minimum": 0.5}), '{"v": 0.5}', '{"v": 0.25}', True),
    ("number maximum", obj(v={"type": "number", "maximum": 2.5}), '{"v": 2.5}', '{"v": 2.75}', True),
    ("number exclusiveMinimum", obj(v={"type": "number", "exclusiveMinimum": 0}), '{"v": 0.1}', '{"v": 0}', True),
    ("number exclusiveMaximum", obj(v={"type": "number", "exclusiveMaximum": 1}), '{"v": 0.99}', '{"v": 1.0}', True),
    (
        "minItems",
        obj(xs={"type": "array", "items": {"type": "integer"}, "minItems": 2}),
        '{"xs": [1, 2]}',
        '{"xs": [1]}',
        True,
    ),
    (
        "maxItems",
        obj(xs={"type": "array", "items": {"type": "integer"}, "maxItems": 2}),
        '{"xs": [1, 2]}',
        '{"xs": [1, 2, 3]}',
        True,
    ),
    ("enum", obj(c={"enum": ["red", "green"]}), '{"c": "green"}', '{"c": "blue"}', True),
    ("const", obj(k={"const": 7}), '{"k": 7}', '{"k": 8}', True),
    (
        "object const",
        obj(level={"const": {"a": 1, "b": [1, 2]}}),
        '{"level": {"a": 1, "b": [1, 2]}}',
        '{"level": {"a": 1, "b": [1, 3]}}',
        True,
    ),
    ("minLength", obj(s={"type": "string", "minLength": 2}), '{"s": "ab"}', '{"s": "a"}', True),
    ("maxLength", obj(s={"type": "string", "maxLength": 3}), '{"s": "abc"}', '{"s": "abcd"}', True),
    ("pattern", obj(s={"type": "string", "pattern": "^[a-c]+$"}), '{"s": "cab"}', '{"s": "cad"}', True),
    ("multipleOf", obj(n={"type": "integer", "multipleOf": 3}), '{"n": 9}', '{"n": 10}', True),
    ("required", obj(a={"type": "integer"}, b={"type": "integer"}), '{"a": 1, "b": 2}', '{"a": 1}', True),
    (
        "nested",
        obj(p=obj(xs={"type": "array", "items": {"type": "integer", "maximum": 5}})),
        '{"p": {"xs": [1, 5]}}',
        '{"p": {"xs": [1, 6]}}',
        True,
    ),
    ("$defs/$ref", DEFS, '{"player": {"x": 9, "y": 0}}', '{"player": {"x": 10, "y": 0}}', True),
    ("anyOf", obj(v={"anyOf": [{"type": "integer", "maximum": 3}, {"type": "null"}]}), '{"v": null}', '{"v": 4}', True),
    # narrower than JSON Schema, on purpose: the schema's property order, and no extra properties
    (
        "property order",
        obj(a={"type": "integer"}, b={"type": "integer"}),
        '{"a": 1, "b": 2}',
        '{"b": 2, "a": 1}',
        False,
    ),
    ("closed object", obj(a={"type": "integer"}), '{"a": 1}', '{"a": 1, "z": 2}', False),
]


@pytest.mark.parametrize("name,schema,valid,violating,invalid_in_json_schema", KEYWORDS, ids=[k[0] for k in KEYWORDS])
def test_keyword_is_enforced(generator, vocab, name, schema, valid, violating, invalid_in_json_schema):
    jsonschema.validate(json.loads(valid), schema)
    assert jsonschema.Draft202012Validator(schema).is_valid(json.loads(violating)) is not invalid_in_json_schema
    constraint = compile_schema(schema)
    assert constraint.unsupported == ()
    for lean in (False, True):
        constraint = compile_schema(schema, lean)
        compact = json.dumps(json.loads(valid), separators=(",", ":"))
        assert refused_at(generator, vocab, constraint, compact) is None
        if not lean:
            assert refused_at(generator, vocab, constraint, valid) is None
        bad = violating if not lean else json.dumps(json.loads(violating), separators=(",", ":"))
        assert refused_at(generator, vocab, constraint, bad) is not None, (name, lean, bad)


def test_whitespace_lean_and_not(generator, vocab):
    schema = obj(a={"type": "integer"}, b={"type": "array", "items": {"type": "integer"}})
    loose, lean = compile_schema(schema), compile_schema(schema, lean=True)
    for text in ('{"a":1,"b":[1,2]}', '{"a": 1, "b": [1, 2]}', '{\n  "a": 1,\n  "b": [\n    1,\n    2\n  ]\n}'):
        assert refused_at(generator, vocab, loose, text) is None, text
    assert refused_at(generator, vocab, lean, '{"a":1,"b":[1,2]}') is None
    for text in ('{"a": 1,"b":[1,2]}', '{"a":1, "b":[1,2]}', '{"a":1,"b":[1, 2]}', ' {"a":1,"b":[]}'):
        assert refused_at(generator, vocab, lean, text) is not None, text
    # bounded: at most one space (or newlines and an indentation) between two JSON tokens
    assert refused_at(generator, vocab, loose, '{"a":  1, "b": []}') is not None
    assert refused_at(generator, vocab, loose, '{"a": 1, "b": []} ') is not None  # nothing after the answer


def test_unsupported_keywords_are_listed():
    schema = {
        "title": "Thing",
        "description": "annotations are not constraints",
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": "c",
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "format": "int32"}, "uniqueItems": True},
            "n": {"type": "integer", "not": {"const": 3}, "default": 1, "examples": [1]},
            "kind": {"oneOf": [{"const": "a"}, {"const": "b"}]},
        },
        "dependentRequired": {"n": ["tags"]},
        "if": {"required": ["n"]},
        "then": {"required": ["tags"]},
    }
    constraint = compile_schema(schema)
    assert set(constraint.unsupported) == {
        "#/properties/tags/items: format (int32)",
        "#/properties/tags: uniqueItems",
        "#/properties/n: not",
        "#/properties/kind: oneOf",
        "#: dependentRequired",
        "#: if",
        "#: then",
    }
    assert compile_schema(KEYWORDS[12][1]).unsupported == ()
    assert compile_schema(DEFS).unsupported == ()
    # multipleOf is enforced by llguidance 1.9 (see KEYWORDS), so it is not listed
    assert compile_schema({"type": "integer", "multipleOf": 2}).unsupported == ()


def test_patterns_the_engine_cannot_compile_are_dropped_and_listed(generator, vocab):
    schema = obj(s={"type": "string", "pattern": "(?<=a)b", "maxLength": 2})
    constraint = compile_schema(schema)
    assert [u.split(" (")[0] for u in constraint.unsupported] == ["#/properties/s: pattern"]
    assert refused_at(generator, vocab, constraint, '{"s": "zz"}') is None  # the pattern is gone ...
    assert refused_at(generator, vocab, constraint, '{"s": "zzz"}') is not None  # ... the rest stays


def test_schemas_the_engine_refuses_raise():
    for schema in (
        {"type": "integer", "minimum": 5, "maximum": 1},
        {"$ref": "#/$defs/missing"},
        {"type": "nonsense"},
        "[1, 2]",
        "{not json",
    ):
        with pytest.raises(ConstraintError):
            compile_schema(schema)


def test_compile_is_cached_per_schema_and_lean():
    schema = obj(a={"type": "integer", "maximum": 3})
    assert compile_schema(schema) is compile_schema(json.dumps(schema))
    assert compile_schema(schema, lean=True) is not compile_schema(schema)
    assert compile_schema(schema).schema == json.dumps(schema)


MAP = {
    "type": "object",
    "properties": {
        "level": {"const": {"name": "cave", "difficulty": 2}},
        "walls": {"type": "array", "items": {"$ref": "#/$defs/Pos"}, "minItems": 3, "maxItems": 3},
        "enemies": {"type": "array", "items": {"$ref": "#/$defs/Pos"}, "minItems": 2, "maxItems": 2},
        "player_pos": {"$ref": "#/$defs/Pos"},
    },
    "required": ["level", "walls", "enemies", "player_pos"],
    "$defs": {
        "Pos": obj(
            x={"type": "integer", "minimum": 0, "maximum": 9}, y={"type": "integer", "minimum": -3, "maximum": 3}
        )
    },
}
SEEDS = range(4)


def test_sampled_answers_follow_the_schema_and_unconstrained_ones_do_not(generator):
    def valid(text: str) -> bool:
        try:
            jsonschema.validate(json.loads(text), MAP)
        except (ValueError, jsonschema.ValidationError):
            return False
        return True

    for lean in (False, True):
        constraint = compile_schema(MAP, lean)
        for seed in SEEDS:
            out = generator.complete(PROMPT, max_tokens=300, constraint=constraint, temperature=1.0, seed=seed)
            assert valid(out.text), (lean, seed, out.text)
            assert out.completion_tokens < 300 and 0 < out.confidence < 1
    # control: the same model, same seeds, no constraint: its answers are not valid Maps
    free = [generator.generate(PROMPT, max_tokens=60, temperature=1.0, seed=seed) for seed in SEEDS]
    assert not any(valid(text) for text in free), free


def test_an_answer_ends_when_complete(generator):
    out = generator.complete(
        PROMPT, max_tokens=50, constraint=compile_schema({"type": "integer", "maximum": 3, "minimum": 0})
    )
    assert out.text in ("0", "1", "2", "3") and out.completion_tokens == 1
    out = generator.complete(PROMPT, max_tokens=50, constraint=compile_schema(obj(k={"const": 7}), lean=True))
    assert out.text == '{"k":7}'


def test_forced_tokens_are_evaluated_in_one_batch_with_the_token_before_them(generator, monkeypatch):
    """Where the constraint leaves one continuation (keys, punctuation, a const), its tokens are
    fast-forwarded: evaluated with the chosen token before them in one batch, not a step each.
    Control: with fast-forwarding off, every token of the same kind of answer is a step."""
    decoder, llm = generator._decoder, generator.llm
    prompt = llm.tokenize(PROMPT.encode(), special=True)
    batches: list[int] = []
    real_eval = llm.eval
    monkeypatch.setattr(llm, "eval", lambda tokens: (batches.append(len(tokens)), real_eval(tokens))[1])

    def decoded(fast_forward: bool):
        decoder.fast_forward = fast_forward
        decoder.evaluate_prompt(prompt)  # the prompt evaluated outside the count
        batches.clear()
        try:
            return decoder.decode(prompt, 300, compile_schema(MAP, lean=True)), list(batches)
        finally:
            decoder.fast_forward = True

    fast, fast_batches = decoded(True)
    step, step_batches = decoded(False)
    for out in (fast, step):
        jsonschema.validate(json.loads(out.text), MAP)
    assert fast.forced > fast.tokens / 2 and fast.counted + fast.forced == fast.tokens
    assert len(fast_batches) < fast.tokens / 2 and max(fast_batches) > 1
    # the control: one evaluation of one token per chosen token
    assert step.forced == 0 and step.counted == step.tokens and set(step_batches) == {1}
    assert 0 < fast.confidence < 1
    whole = decoder.decode(prompt, 50, compile_schema(obj(k={"const": 7}, n={"const": "x"}), lean=True))
    assert (whole.text, whole.counted, whole.confidence) == ('{"k":7,"n":"x"}', 0, 1.0)  # nothing chosen: certain


def test_sampling_is_deterministic_per_seed(generator):
    for constraint in (None, compile_schema(MAP)):
        texts = [
            generator.generate(PROMPT, max_tokens=40, constraint=constraint, temperature=1.0, seed=seed)
            for seed in SEEDS
        ]
        assert texts == [
            generator.generate(PROMPT, max_tokens=40, constraint=constraint, temperature=1.0, seed=seed)
            for seed in SEEDS
        ]
        assert len(set(texts)) > 1, texts
    greedy = generator.generate(PROMPT, max_tokens=40, constraint=compile_schema(MAP), seed=1)
    assert greedy == generator.generate(PROMPT, max_tokens=40, constraint=compile_schema(MAP), seed=2)


def _whitespace_outside_strings(text: str) -> bool:
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch.isspace():
            return True
    return False


def test_lean_answers_have_no_whitespace_outside_strings(generator):
    schema = {
        **MAP,
        "properties": {**MAP["properties"], "name": {"type": "string", "maxLength": 12}},
        "required": [*MAP["required"], "name"],
    }
    lean = [
        generator.generate(
            PROMPT, max_tokens=300, constraint=compile_schema(schema, lean=True), temperature=1.0, seed=seed
        )
        for seed in SEEDS
    ]
    assert not any(_whitespace_outside_strings(text) for text in lean), lean
    assert all(json.loads(text)["name"] is not None for text in lean)
    loose = [
        generator.generate(PROMPT, max_tokens=300, constraint=compile_schema(schema), temperature=1.0, seed=seed)
        for seed in SEEDS
    ]
    assert any(_whitespace_outside_strings(text) for text in loose), loose  # control: the random model likes spaces
