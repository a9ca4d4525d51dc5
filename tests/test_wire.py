"""One reading of `response_format` (understudy.wire): the recorder's parse-valid flag, the router's
serving gate and shadow scores, training's held-out evaluation and the decoder's schema agree on
every answer, including the cases where they used to differ (JSON mode given an array, a schema
jsonschema rejects, a json_schema request without a schema)."""

from __future__ import annotations

import json

import pytest

from understudy import wire
from understudy.inference.checked_sampling import AnswerChecks
from understudy.proxy.call_record import typed_output_valid
from understudy.routing.scoring import ScoringPolicy, score_pair
from understudy.training.evaluate import parse_valid
from understudy.validators import local_verdict

COLOR = {
    "type": "json_schema",
    "json_schema": {
        "name": "Color",
        "schema": {
            "type": "object",
            "properties": {"color": {"type": "string", "enum": ["red", "teal"]}},
            "required": ["color"],
        },
    },
}
JSON_MODE = {"type": "json_object"}
NO_SCHEMA = {"type": "json_schema", "json_schema": {"name": "Anything"}}
BROKEN_SCHEMA = {"type": "json_schema", "json_schema": {"name": "Broken", "schema": {"type": "no-such-type"}}}
TEXT = {"type": "text"}

CASES = [  # (answer, response_format, fits?)
    ('{"color": "red"}', COLOR, True),
    ('{"color": "blue"}', COLOR, False),  # off its enum
    ('{"colour": "red"}', COLOR, False),  # a required field missing
    ("not json", COLOR, False),
    ("", COLOR, False),
    ('{"a": 1}', JSON_MODE, True),
    ("[1, 2]", JSON_MODE, False),  # JSON mode promises an object: the scorer used to accept this
    ("[1, 2]", NO_SCHEMA, True),  # no schema: any JSON
    ('{"x": 1}', BROKEN_SCHEMA, True),  # a schema jsonschema rejects cannot fail the answer
    ("{", BROKEN_SCHEMA, False),  # ... but the answer must still parse
]


def completion(text: str) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


@pytest.mark.parametrize(("answer", "response_format", "expected"), CASES)
def test_every_part_reads_an_answer_alike(answer, response_format, expected):
    assert wire.fits(answer, response_format) is expected
    assert typed_output_valid({"response_format": response_format}, completion(answer)) is expected  # recorder
    assert local_verdict(answer, response_format, None)[0] is expected  # the serving gate
    assert parse_valid(answer, response_format) is expected  # held-out evaluation, `understudy eval`
    scored = score_pair(answer, answer, response_format=response_format, policy=ScoringPolicy())
    assert scored.local_valid is expected and scored.upstream_valid is expected  # shadow scores


def test_the_decoder_is_given_the_same_schema():
    assert AnswerChecks(wire.response_schema(COLOR)).schema == COLOR["json_schema"]["schema"]
    assert wire.response_schema(JSON_MODE) == {"type": "object"}
    assert wire.response_schema(NO_SCHEMA) is None and wire.response_schema(TEXT) is None
    assert wire.response_schema(None) is None and wire.schema_name(COLOR) == "Color"


def test_free_text_fits_when_it_is_not_empty():
    assert wire.fits("anything at all", TEXT) is None and wire.fits("x", None) is None  # not a typed answer
    assert local_verdict("anything at all", None, None)[0] is True
    assert local_verdict("   ", None, None) == (False, "unusable: empty output")
    assert wire.check_answer('{"color": "blue"}', COLOR)[1] == 'schema: "blue" is not one of "red" or "teal" at /color'
    assert json.loads(json.dumps(wire.check_answer('{"a": 1}', JSON_MODE)[0])) == {"a": 1}
