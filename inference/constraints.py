"""The constraint compiler: a JSON schema made into an llguidance grammar for local decoding.

A local typed answer is decoded under its request's JSON schema so it always parses and
validates. The engine is llguidance (the Rust library behind guidance): llama-cpp-python's own
`json_schema_to_gbnf` silently drops `minimum`/`maximum` and other value keywords, while
llguidance enforces numeric ranges (inclusive and exclusive), item counts, string lengths,
patterns, formats, `enum`/`const` (object-valued too), `$defs`/`$ref`, `anyOf`/`allOf`, and
computes a full-vocabulary token mask in tens of microseconds (benchmarks/constraint_engines.py).

`compile_schema(schema, lean)` gives a `Constraint` (cached per schema text and `lean`): the
grammar, and `unsupported`, every keyword in the schema the engine does not enforce
("<json pointer>: <keyword>"), so a caller knows what a decoded answer may still violate.
Keywords llguidance does not implement are ignored (its `lenient` mode); a `pattern` its regex
engine cannot compile (look-arounds, back-references) is dropped and listed too; any other
schema it refuses raises `ConstraintError`.

Properties are written in the schema's order (the order the model was trained to write them
in), and an object with `properties` takes no others unless the schema says so
(`additionalProperties`), as under llama.cpp's grammar: the answer ends when it is complete.
Whitespace: `lean` answers are compact JSON with no optional whitespace at all
(`{"a":1,"b":[1,2]}`); other answers may put, between any two JSON tokens, nothing, one space,
or one or two newlines and up to 20 spaces/tabs of indentation (llama.cpp's C++ JSON-schema
converter's rule): `{"a":1}`, `{"a": 1, "b": [1, 2]}` and indented upstream JSON all parse,
and no gap runs on.

`LlamaVocab(llm)` is llguidance's view of a loaded llama.cpp model's vocabulary (built once per
model, ~1 s on Gemma's 262k tokens); `LlamaVocab.matcher(constraint)` makes the `LLMatcher`
for one generation (inference.decoding).
"""

from __future__ import annotations

import ctypes
import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # only its stub names the type

# The whitespace a non-lean answer may put between two JSON tokens: llama.cpp's (C++) JSON-schema
# `space` rule; llama-cpp-python's converter allowed one optional space only, too little for
# an indented upstream answer.
FLEXIBLE_WHITESPACE = r"( |\n{1,2}[ \t]{0,20})?"

# Keywords llguidance 1.9 enforces (checked one by one against a real vocabulary in
# tests/training/test_constraints.py and llguidance's own "Unimplemented keys" warnings).
# `format` only for the values in ENFORCED_FORMATS.
ENFORCED = frozenset(
    {
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "patternProperties",
        "minProperties",
        "maxProperties",
        "items",
        "prefixItems",
        "additionalItems",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "anyOf",
        "allOf",
        "$ref",
        "$defs",
        "definitions",
    }
)
ENFORCED_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uri", "uuid", "unknown"}
)
# Keywords that constrain nothing (annotations, identifiers, vendor extensions such as
# OpenAPI's `discriminator`, whose `oneOf` is listed anyway). Everything neither here nor in
# ENFORCED is unsupported: `oneOf` (decoded as `anyOf`: exclusivity is not enforced), `not`,
# `if`/`then`/`else`, `uniqueItems`, `contains`, `dependentRequired`, `propertyNames`, ...
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "$anchor",
        "$vocabulary",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentEncoding",
        "contentMediaType",
        "contentSchema",
        "discriminator",
        "x-guidance",
    }
)
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")  # name -> subschema
_SCHEMA_LISTS = ("prefixItems", "anyOf", "allOf")  # [subschema, ...]
_SCHEMAS = ("additionalProperties", "additionalItems")  # one subschema (items: one or a list)


class ConstraintError(ValueError):
    """A schema the constraint engine cannot compile."""


@dataclass(frozen=True)
class Constraint:
    schema: str  # the JSON schema, as JSON text (properties in the schema's order)
    lean: bool  # compact JSON, no optional whitespace
    grammar: str  # llguidance grammar (LLMatcher.grammar_from_json_schema)
    unsupported: tuple[str, ...] = ()  # "<json pointer>: <keyword>" the grammar does not enforce


def compile_schema(schema: dict | str, lean: bool = False) -> Constraint:
    """The constraint for a JSON schema (a dict or its JSON text); cached per text and `lean`."""
    return _compile(schema if isinstance(schema, str) else json.dumps(schema), bool(lean))


def _options(lean: bool) -> JsonCompileOptions:
    options: JsonCompileOptions = {"lenient": True, "item_separator": ",", "key_separator": ":"}
    if lean:
        options["whitespace_flexible"] = False
    else:
        options["whitespace_flexible"] = True
        options["whitespace_pattern"] = FLEXIBLE_WHITESPACE
    return options


@functools.lru_cache(maxsize=256)
def _compile(text: str, lean: bool) -> Constraint:
    from llguidance import LLMatcher

    try:
        schema = json.loads(text)
    except ValueError as e:
        raise ConstraintError(f"the schema is not JSON: {e}") from None
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise ConstraintError(f"a JSON schema must be an object (or true), not {type(schema).__name__}")
    unsupported = unsupported_keywords(schema)
    bad_patterns = _uncompilable_patterns(schema)
    if bad_patterns:
        schema = _without_patterns(schema, {pointer for pointer, _ in bad_patterns})
        unsupported = tuple(sorted(set(unsupported) | {f"{p}: pattern ({why})" for p, why in bad_patterns}))
    if not _mentions(schema, "allOf"):
        schema = _closed(schema)
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, overrides=_options(lean))
    except ValueError as e:
        raise ConstraintError(f"llguidance cannot read the schema: {e}") from None
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ConstraintError(f"llguidance cannot compile the schema: {messages[0] if messages else 'unknown error'}")
    return Constraint(text, lean, grammar, unsupported)


def _mentions(value: Any, key: str) -> bool:
    if isinstance(value, dict):
        return key in value or any(_mentions(v, key) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, key) for v in value)
    return False


def _closed(schema: Any) -> Any:
    """A copy of `schema` whose objects with `properties` and no say about other properties get
    `additionalProperties: false`: an answer writes the schema's properties and ends, as under
    llama.cpp's grammar (JSON Schema itself allows extra keys, which an untrained model writes on
    and on). Not done when the schema has an `allOf` (its parts may each list some properties)."""
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k in ("enum", "const", "default", "examples") else _closed(v)) for k, v in schema.items()}
    if isinstance(schema.get("properties"), dict) and not any(
        k in schema for k in ("additionalProperties", "patternProperties", "unevaluatedProperties")
    ):
        out["additionalProperties"] = False
    return out


# --- what the engine does not enforce ---------------------------------------------------
def _pointer(parts: tuple) -> str:
    return "#" + "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _subschemas(schema: dict, path: tuple):
    """(path, subschema) for every subschema under an enforced keyword of `schema`."""
    for key in _SCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            for name, sub in schema[key].items():
                yield path + (key, name), sub
    for key in _SCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            for i, sub in enumerate(schema[key]):
                yield path + (key, i), sub
    for key in _SCHEMAS:
        if key in schema:
            yield path + (key,), schema[key]
    items = schema.get("items")
    if isinstance(items, list):  # draft 4 tuples
        for i, sub in enumerate(items):
            yield path + ("items", i), sub
    elif items is not None:
        yield path + ("items",), items


def _walk(schema: Any, path: tuple = ()):
    """(path, schema) for `schema` and every subschema the engine reads."""
    if not isinstance(schema, dict):
        return
    yield path, schema
    for sub_path, sub in _subschemas(schema, path):
        yield from _walk(sub, sub_path)


def unsupported_keywords(schema: dict) -> tuple[str, ...]:
    """Every keyword of `schema` (nested too) that constrains values but is not enforced."""
    out = []
    for path, node in _walk(schema):
        pointer = _pointer(path)
        for key, value in node.items():
            if key in ANNOTATIONS or key.startswith("x-"):
                continue
            if key == "format":
                if value not in ENFORCED_FORMATS:
                    out.append(f"{pointer}: format ({value})")
            elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
                if value:
                    out.append(f"{pointer}: {key}")  # draft 4's boolean form is not read
            elif key not in ENFORCED:
                out.append(f"{pointer}: {key}")
    return tuple(out)


def _uncompilable_patterns(schema: dict) -> list[tuple[str, str]]:
    """(pointer, reason) of every `pattern` llguidance's regex engine refuses on its own."""
    from llguidance import LLMatcher

    bad = []
    for path, node in _walk(schema):
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            grammar = LLMatcher.grammar_from_json_schema({"type": "string", "pattern": pattern})
            is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
            if is_error:
                reason = (messages[0] if messages else "").strip().splitlines()[-1:] or ["not supported"]
                bad.append((_pointer(path), reason[0].removeprefix("error: ")))
    return bad


def _without_patterns(schema: Any, pointers: set[str], path: tuple = ()) -> Any:
    """A copy of `schema` with `pattern` removed at the given pointers."""
    if not isinstance(schema, dict):
        return schema
    here = {k: v for k, v in schema.items() if not (k == "pattern" and _pointer(path) in pointers)}
    for sub_path, _ in list(_subschemas(schema, path)):
        key = sub_path[len(path)]
        if len(sub_path) == len(path) + 1:
            here[key] = _without_patterns(schema[key], pointers, sub_path)
        else:
            index = sub_path[-1]
            container = here[key] = dict(here[key]) if isinstance(here[key], dict) else list(here[key])
            container[index] = _without_patterns(schema[key][index], pointers, sub_path)
    return here


# --- matchers on a llama.cpp vocabulary -------------------------------------------------------
class LlamaVocab:
    """llguidance's tokenizer for a loaded llama.cpp model (llama-cpp-python 0.3.x low-level API).

    Built once per loaded model: it reads every token's bytes (~1 s for 262k tokens). This is
    `llguidance.llamacpp.lltokenizer_from_vocab` on the current API (`llama_vocab_get_attr`; the
    deprecated `llama_token_get_attr` it calls warns on every token). Control tokens (and
    user-defined ones that look like them) are marked special, so the grammar never writes them.
    Every end-of-generation token (llama.cpp's EOG set: EOS, end-of-turn, ...) ends an answer for
    llguidance, allowed once the answer is complete."""

    def __init__(self, llm):
        import llama_cpp
        from llguidance import LLTokenizer

        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.n_vocab = llm.n_vocab()
        ntok = llama_cpp.llama_vocab_n_tokens(vocab)
        size = 16 * 1024
        buffer = ctypes.create_string_buffer(size + 1)
        tokens: list[bytes] = []
        eog = []
        for token in range(ntok):
            n = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, True)
            if n < 0:
                raise ValueError(f"llama.cpp could not write token {token} ({n})")
            piece = bytes(buffer[:n])
            attr = llama_cpp.llama_vocab_get_attr(vocab, token)
            if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL or (
                attr & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED and piece.startswith(b"<") and piece.endswith(b">")
            ):
                piece = b"\xff" + piece  # llguidance's mark of a special token
            tokens.append(piece)
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                eog.append(token)
        tokens += [b""] * (self.n_vocab - len(tokens))
        self.eog = tuple(eog) or (llama_cpp.llama_vocab_eos(vocab),)
        tokenize = ctypes.cast(llama_cpp.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
        self.tokenizer = LLTokenizer.from_llamacpp(
            tokens=tokens, vocab_ptr=vocab, tokenize_fptr=tokenize, eos_token=list(self.eog), slices=None
        )
        self._llm = llm  # the vocabulary (and llguidance's pointer to it) lives as long as the model

    def matcher(self, constraint: Constraint):
        """A fresh `llguidance.LLMatcher` for one generation under `constraint`."""
        from llguidance import LLMatcher

        matcher = LLMatcher(self.tokenizer, constraint.grammar, log_level=0)
        if matcher.is_error():
            raise ConstraintError(f"llguidance cannot use the schema: {matcher.get_error()}")
        return matcher
