"""The RPG constraints bound to a request: the response schema tightened with what the call fixes.

Sound: every teacher answer the validator accepts fits its request's tightened schema (a
constraint never forbids a right answer). Useful: an answer that breaks a count, a bound or the
echoed level is outside it, for the schema check (jsonschema) and for the decoder's engine alike
(llguidance refuses its tokens).
"""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from tests.support.showcase import level_request, map_request, showcase_rounds
from understudy.jac_examples.teacher.teacher import Teacher
from understudy.validators import ValidatorRegistry

REGISTRY = ValidatorRegistry()


def _tightened(request: dict) -> dict:
    bound = REGISTRY.for_request(request)
    assert bound is not None
    return bound.constrain(request["response_format"]["json_schema"]["schema"])


def _fits(answer: dict, schema: dict) -> bool:
    try:
        jsonschema.validate(answer, schema)
    except jsonschema.ValidationError:
        return False
    return True


@pytest.fixture(scope="module")
def rounds():
    teacher = Teacher(seed=7, flaw_share=0.0)
    out = []
    for level_req, map_req in showcase_rounds(3, 4, teacher):
        out.append((level_req, teacher.respond(level_req).content))
        out.append((map_req, teacher.respond(map_req).content))
    return out


def test_every_valid_teacher_answer_fits_its_tightened_schema(rounds):
    checked = 0
    for request, answer in rounds:
        bound = REGISTRY.for_request(request)
        if bound(answer).passed:
            assert _fits(json.loads(answer), _tightened(request)), answer
            checked += 1
    assert checked >= 20


def _a_valid_map(rounds) -> tuple[dict, dict]:
    for request, answer in rounds:
        if request["response_format"]["json_schema"]["name"] == "Map" and REGISTRY.for_request(request)(answer).passed:
            return request, json.loads(answer)
    raise AssertionError("the teacher made no valid map")


def _broken_maps(good: dict) -> dict[str, dict]:
    level = good["level"]
    broken = {}
    m = copy.deepcopy(good)
    m["walls"].append(
        copy.deepcopy(m["walls"][0]) if m["walls"] else {"start_pos": {"x": 0, "y": 0}, "end_pos": {"x": 0, "y": 0}}
    )
    broken["one wall too many"] = m
    m = copy.deepcopy(good)
    m["enemies"] = m["enemies"][:-1]
    broken["one enemy too few"] = m
    m = copy.deepcopy(good)
    m["player_pos"]["x"] = level["width"]  # one column past the grid
    broken["player outside the grid (x)"] = m
    m = copy.deepcopy(good)
    m["enemies"][0]["y"] = -1
    broken["enemy above the grid (y)"] = m
    m = copy.deepcopy(good)
    m["level"]["num_enemies"] += 1
    broken["level not echoed"] = m
    return broken


def test_a_map_breaking_a_count_a_bound_or_the_echo_is_outside_the_schema(rounds):
    request, good = _a_valid_map(rounds)
    schema = _tightened(request)
    assert _fits(good, schema)
    plain = request["response_format"]["json_schema"]["schema"]
    for what, bad in _broken_maps(good).items():
        assert not REGISTRY.for_request(request)(json.dumps(bad)).passed, what
        assert not _fits(bad, schema), what
        assert _fits(bad, plain), what  # the control: the request's own schema lets every one through


@pytest.fixture(scope="module")
def gemma_vocab():
    """The bundled Gemma base's vocabulary (what the proxy decodes with), loaded without weights."""
    import llama_cpp

    from understudy.inference.constraints import LlamaVocab
    from understudy.training.config import default_gemma_gguf

    llm = llama_cpp.Llama(default_gemma_gguf(), vocab_only=True, verbose=False)
    yield llm, LlamaVocab(llm)
    llm.close()


def _accepts(gemma_vocab, constraint, text: str) -> bool:
    """The engine lets the model write `text` whole (token by token) and end there."""
    llm, vocab = gemma_vocab
    matcher = vocab.matcher(constraint)
    for token in llm.tokenize(text.encode(), add_bos=False, special=False):
        if not matcher.consume_token(token):
            return False
    return matcher.is_accepting()


def test_the_decoders_engine_refuses_what_the_schema_refuses(rounds, gemma_vocab):
    from understudy.inference.constraints import compile_schema

    request, good = _a_valid_map(rounds)
    constraint = compile_schema(_tightened(request), lean=True)
    plain = compile_schema(request["response_format"]["json_schema"]["schema"], lean=True)
    assert _accepts(gemma_vocab, constraint, json.dumps(good, separators=(",", ":")))
    for what, bad in _broken_maps(good).items():
        text = json.dumps(bad, separators=(",", ":"))
        assert not _accepts(gemma_vocab, constraint, text), what
        assert _accepts(gemma_vocab, plain, text), what  # the control: the plain schema's grammar allows it


def test_a_level_of_another_size_or_difficulty_is_outside_the_schema():
    request = level_request(4, 20, 12)
    schema = _tightened(request)
    level = {
        "name": "Level 4: The Ashen Vault",
        "difficulty": 4,
        "width": 20,
        "height": 12,
        "num_wall": 5,
        "num_enemies": 4,
        "time_countdown": 200,
        "n_retries_allowed": 3,
    }
    assert _fits(level, schema) and REGISTRY.for_request(request)(json.dumps(level)).passed
    for field, value in (
        ("width", 21),
        ("height", 11),
        ("difficulty", 5),
        ("num_enemies", -1),
        ("num_wall", -2),
        ("num_enemies", 20 * 12),
        ("name", ""),
    ):
        bad = {**level, field: value}
        assert not _fits(bad, schema), field
        assert not REGISTRY.for_request(request)(json.dumps(bad)).passed, field


def test_a_request_without_a_level_leaves_the_schema_as_it_is():
    request = map_request(
        {
            "name": "x",
            "difficulty": 1,
            "width": 5,
            "height": 5,
            "num_wall": 1,
            "num_enemies": 1,
            "time_countdown": 10,
            "n_retries_allowed": 1,
        }
    )
    request["messages"][1]["content"][0]["text"] = (
        "Lay out the map for the given level, following its size and counts exactly.\n\n"
    )
    plain = request["response_format"]["json_schema"]["schema"]
    assert _tightened(request) == plain
