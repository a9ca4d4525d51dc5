"""Shadow scoring: each component on its own, the gate, no free points (creative and constrained fields,
chance), the RPG validators with request arguments, and real embeddings."""

from __future__ import annotations

import json
import math
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.showcase import level_request, showcase_rounds
from understudy.byllm.prompt import CallArguments
from understudy.jac_examples.teacher.teacher import Teacher
from understudy.routing.router import site_scoring
from understudy.routing.scoring import AgreementScore, ScoringPolicy, score_pair
from understudy.routing.similarity import Embedder, default_model_path, shared_embedder
from understudy.validators import BoundValidator, ValidatorRegistry
from understudy.wire import schema_name

POLICY = ScoringPolicy()


def json_format(schema: dict, name: str = "Thing") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def score_json(upstream: object, local: object, schema: dict | None = None, **kwargs) -> AgreementScore:
    fmt = json_format(schema) if schema is not None else {"type": "json_object"}
    kwargs.setdefault("policy", POLICY)
    return score_pair(json.dumps(upstream), json.dumps(local), response_format=fmt, **kwargs)


# --- structural: scalars ------------------------------------------------------------------

ENUM_SCHEMA = {
    "type": "object",
    "properties": {
        "mood": {"$ref": "#/$defs/Mood"},
        "speed": {"anyOf": [{"type": "integer", "enum": [1, 2, 3]}, {"type": "null"}]},
        "note": {"type": "string"},
    },
    "$defs": {"Mood": {"type": "string", "enum": ["calm", "CALM", "angry"]}},
}


def test_enum_strings_compare_exactly_even_through_refs():
    # "calm" and "CALM" normalise to the same text, but they are different enum members.
    result = score_json({"mood": "calm"}, {"mood": "CALM"}, ENUM_SCHEMA)
    assert result.components["structural"] == 0.0
    assert score_json({"mood": "calm"}, {"mood": "calm"}, ENUM_SCHEMA).score == 1.0


def test_enum_numbers_ignore_tolerance():
    # 2 vs 3 would not be within 10% anyway; use a wide tolerance to prove enums skip it.
    wide = ScoringPolicy(number_tolerance=0.5)
    assert score_json({"speed": 2}, {"speed": 3}, ENUM_SCHEMA, policy=wide).score == 0.0
    assert score_json({"n": 2}, {"n": 3}, policy=wide).score == 1.0


def test_free_strings_use_normalised_equality_without_similarity():
    assert score_json({"note": "Hello   World "}, {"note": "hello world"}, ENUM_SCHEMA).score == 1.0
    assert score_json({"note": "hello world"}, {"note": "goodbye"}, ENUM_SCHEMA).score == 0.0


def test_free_strings_use_similarity_when_given():
    result = score_json({"note": "hello"}, {"note": "hi"}, ENUM_SCHEMA, similarity=lambda a, b: 0.7)
    assert result.score == pytest.approx(0.7)


def test_bools_and_nulls_are_exact_and_never_numbers():
    assert score_json({"ok": True}, {"ok": True}).score == 1.0
    assert score_json({"ok": True}, {"ok": False}).score == 0.0
    assert score_json({"ok": True}, {"ok": 1}).score == 0.0
    assert score_json({"v": None}, {"v": None}).score == 1.0
    assert score_json({"v": None}, {"v": 0}).score == 0.0


@pytest.mark.parametrize(
    ("upstream", "local", "agrees"),
    [
        (100, 109, True),
        (100, 110, True),
        (100, 111, False),  # tolerance is relative to the upstream value
        (0, 0, True),
        (-50, -46, True),
        (5, 5.0, True),
        (3, 4, False),
    ],
)
def test_numbers_agree_within_relative_tolerance(upstream, local, agrees):
    assert score_json({"n": upstream}, {"n": local}).score == (1.0 if agrees else 0.0)


def test_number_tolerance_is_configurable():
    assert score_json({"n": 100}, {"n": 125}, policy=ScoringPolicy(number_tolerance=0.25)).score == 1.0


def test_type_mismatch_scores_zero():
    assert score_json({"v": "3"}, {"v": 3}).score == 0.0


# --- structural: lists and objects --------------------------------------------------------


def test_lists_score_by_jaccard_overlap_ignoring_order():
    assert score_json({"tags": ["a", "b", "c"]}, {"tags": ["c", "b", "a"]}).score == 1.0
    # {a, b, c} vs {b, c, d}: 2 shared of 4 distinct.
    assert score_json({"tags": ["a", "b", "c"]}, {"tags": ["b", "c", "d"]}).score == pytest.approx(0.5)
    assert score_json({"tags": []}, {"tags": []}).score == 1.0
    assert score_json({"tags": ["a"]}, {"tags": []}).score == 0.0


def test_list_items_compare_as_canonical_json():
    upstream = {"pts": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]}
    local = {"pts": [{"y": 2, "x": 1}, {"x": 3, "y": 5}]}  # key order is irrelevant
    assert score_json(upstream, local).score == pytest.approx(1 / 3)


def test_duplicates_count_in_list_overlap():
    assert score_json({"t": ["a", "a"]}, {"t": ["a"]}).score == pytest.approx(0.5)


def test_objects_recurse_and_average_over_the_union_of_keys():
    upstream = {"name": "Cave", "size": {"w": 20, "h": 20}, "hard": True}
    local = {"name": "Cave", "size": {"w": 20, "h": 30}, "extra": 1}
    # name 1, size mean(w 1, h 0) = 0.5, hard missing 0, extra missing 0 → 1.5 / 4.
    result = score_json(upstream, local)
    assert result.components["structural"] == pytest.approx(1.5 / 4)
    assert result.score == pytest.approx(1.5 / 4)


def test_identical_nested_answers_score_one():
    value = {"a": [1, 2, {"b": [True, None]}], "c": {"d": {"e": "x"}}}
    assert score_json(value, value).score == 1.0
    assert score_json({}, {}).score == 1.0


# --- the gate -----------------------------------------------------------------------------

LEVEL_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "difficulty": {"type": "integer"}},
    "required": ["name", "difficulty"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "local_text",
    [
        "",
        "   ",
        '{"name": "Cave", "difficulty": 3',  # truncated
        '```json\n{"name": "Cave", "difficulty": 3}\n```',  # byLLM rejects fences
        'Here it is: {"name": "Cave", "difficulty": 3}',
        '{"name": "Cave"}',  # schema: missing property
        '{"name": "Cave", "difficulty": "hard"}',  # schema: wrong type
    ],
)
def test_unusable_local_output_scores_zero(local_text):
    result = score_pair(
        '{"name": "Cave", "difficulty": 3}',
        local_text,
        response_format=json_format(LEVEL_SCHEMA),
        policy=POLICY,
        similarity=lambda a, b: 1.0,
    )
    assert result.score == 0.0
    assert result.local_valid is False
    assert result.components["parse_valid"] is False
    assert result.components["error"]
    json.dumps(result.components)  # stored as JSON by the caller


def bound(fn, arguments: dict | None = None) -> BoundValidator:
    """A validator bound to a request's arguments, as the router builds one."""
    return BoundValidator("tests:validator", fn, CallArguments(arguments or {}))


def test_validator_failure_scores_zero_whatever_the_similarity():
    text = '{"name": "Cave", "difficulty": 3}'
    result = score_pair(
        text,
        '{"name": "Cave", "difficulty": 4}',
        response_format=json_format(LEVEL_SCHEMA),
        policy=POLICY,
        validator=bound(
            lambda answer, args: (json.loads(answer)["difficulty"] == args["difficulty"], {"why": "asked 3"}),
            {"difficulty": 3},
        ),
        similarity=lambda a, b: 1.0,
    )
    assert result.score == 0.0
    assert result.local_valid is False and result.upstream_valid is True
    assert result.components["parse_valid"] is True
    assert result.components["validator"] is False
    assert json.loads(result.components["validator_detail"]) == {"why": "asked 3"}


def test_a_crashing_validator_fails_closed():
    def boom(_answer: str, _arguments) -> bool:
        raise RuntimeError("bug")

    text = '{"name": "Cave", "difficulty": 3}'
    result = score_pair(text, text, response_format=json_format(LEVEL_SCHEMA), policy=POLICY, validator=bound(boom))
    assert result.score == 0.0 and result.local_valid is False
    assert "bug" in result.components["validator_detail"]


def test_passing_validator_is_recorded_and_does_not_change_the_score():
    text = '{"name": "Cave", "difficulty": 3}'
    result = score_pair(
        text, text, response_format=json_format(LEVEL_SCHEMA), policy=POLICY, validator=bound(lambda a, args: True)
    )
    assert result.components["validator"] is True
    assert result.score == 1.0 and result.local_valid is True


def test_unusable_upstream_answer_is_not_comparable():
    result = score_pair("{oops", '{"a": 1}', response_format={"type": "json_object"}, policy=POLICY)
    assert result.comparable is False and result.local_valid is True and result.score == 0.0
    text_result = score_pair("", "some answer", response_format=None, policy=POLICY)
    assert text_result.comparable is False and text_result.local_valid is True


def test_an_upstream_answer_that_fails_the_validator_is_no_reference():
    # Nothing right to agree with: the pair is not comparable, but the local answer's validity counts.
    check = bound(lambda answer, args: json.loads(answer)["difficulty"] == 3)
    result = score_pair(
        '{"name": "Cave", "difficulty": 5}',
        '{"name": "Cave", "difficulty": 3}',
        response_format=json_format(LEVEL_SCHEMA),
        policy=POLICY,
        validator=check,
    )
    assert result.comparable is False and result.upstream_valid is False
    assert result.local_valid is True and "fails its validator" in result.components["upstream_error"]


def test_plain_text_sites_are_valid_unless_empty():
    assert score_pair("Hi there", "hi  there", response_format=None, policy=POLICY).score == 1.0
    assert score_pair("Hi", "", response_format={"type": "text"}, policy=POLICY).local_valid is False


# --- no free points: creative fields, constrained fields, chance -------------------------


def test_creative_fields_earn_nothing_without_a_validator():
    # Without a check that could fail, a creative field is compared like any other field.
    policy = ScoringPolicy(creative_paths=("title",))
    result = score_json({"title": "Dawn", "n": 3}, {"title": "Dusk", "n": 3}, policy=policy)
    assert result.components["compared_fields"] == 2 and result.score == pytest.approx(0.5)


def test_creative_fields_are_left_to_a_passing_validator():
    policy = ScoringPolicy(creative_paths=("title",))
    check = bound(lambda answer, args: bool(json.loads(answer)["title"]))
    result = score_json({"title": "Dawn", "n": 3}, {"title": "Dusk", "n": 3}, policy=policy, validator=check)
    assert result.components["compared_fields"] == 1 and result.score == 1.0
    empty = score_json({"title": "Dawn", "n": 3}, {"title": "", "n": 3}, policy=policy, validator=check)
    assert empty.score == 0.0 and empty.local_valid is False  # the credit came from a check that can fail


def test_fields_the_request_fixed_are_the_validators_not_agreement():
    # A validator that checked `size` against the request reports it constrained: agreement on it
    # is guaranteed by the gate, so it would be a free point.
    def check(answer, args):
        return json.loads(answer)["size"] == args["size"], {"constrained": ["size"]}

    result = score_json({"size": 4, "n": 1}, {"size": 4, "n": 2}, validator=bound(check, {"size": 4}))
    assert result.components["compared_fields"] == 1 and result.score == 0.0
    wrong_size = score_json({"size": 4, "n": 1}, {"size": 5, "n": 1}, validator=bound(check, {"size": 4}))
    assert wrong_size.score == 0.0 and wrong_size.local_valid is False


def test_nothing_left_to_compare_leaves_the_judgement_to_the_validator():
    policy = ScoringPolicy(creative_paths=("layout",))
    check = bound(lambda answer, args: len(json.loads(answer)["layout"]) == args["cells"], {"cells": 2})
    fits = score_json({"layout": [1, 2]}, {"layout": [7, 8]}, policy=policy, validator=check)
    misfits = score_json({"layout": [1, 2]}, {"layout": [7]}, policy=policy, validator=check)
    assert (fits.score, misfits.score) == (1.0, 0.0)


def test_chance_correction_takes_away_what_an_answer_to_another_request_would_get():
    # Answers of this site always share `kind`; only `value` depends on the request.
    upstream = {"kind": "reading", "value": 10}
    decoys = [json.dumps({"kind": "reading", "value": v}) for v in (20, 30, 40, 50)]
    own = score_json(upstream, {"kind": "reading", "value": 10}, decoys=decoys)
    other = score_json(upstream, {"kind": "reading", "value": 30}, decoys=decoys)
    assert own.score == 1.0
    assert other.components["structural"] == 0.5  # `kind` matches: half the raw agreement for free
    assert other.components["chance"] == pytest.approx(0.5 + 0.5 / 4) and other.score == 0.0
    uncorrected = score_json(upstream, {"kind": "reading", "value": 30})
    assert uncorrected.score == 0.5 and uncorrected.components["chance"] is None


def test_a_site_whose_answers_never_vary_keeps_its_raw_agreement():
    same = json.dumps({"ok": True})
    assert (
        score_pair(same, same, response_format={"type": "json_object"}, policy=POLICY, decoys=[same] * 3).score == 1.0
    )


# --- the RPG validators with the request's arguments --------------------------------------

LEVEL_INT_FIELDS = ("difficulty", "width", "height", "num_wall", "num_enemies", "time_countdown", "n_retries_allowed")


def pos(x: int, y: int) -> dict:
    return {"x": x, "y": y}


def test_a_map_for_another_level_scores_zero(teacher_corpus):
    registry, teacher = ValidatorRegistry(), Teacher(seed=1, flaw_share=0.0)
    # Requests whose level is buildable (the teacher's levels include flawed ones), with good maps.
    good = [
        (r, a) for r in teacher_corpus["Map"] for a in [teacher.respond(r).content] if registry.for_request(r)(a).passed
    ]
    (map_request, upstream), (other_request, other_map) = good[0], good[1]
    check = registry.for_request(map_request)
    assert check.reference.endswith(":check_map") and other_request["messages"] != map_request["messages"]
    result = score_pair(
        upstream,
        other_map,
        response_format=map_request["response_format"],
        policy=site_scoring("Map", {}),
        validator=check,
    )
    assert result.score == 0.0 and result.local_valid is False
    assert "level_echo" in result.components["validator_detail"]
    assert (
        score_pair(
            upstream,
            upstream,
            response_format=map_request["response_format"],
            policy=site_scoring("Map", {}),
            validator=check,
        ).score
        == 1.0
    )


@pytest.fixture(scope="module")
def teacher_corpus():
    """Level and Map requests as the showcase sends them over 8 games of 5 levels."""
    rounds = showcase_rounds(8, 5, Teacher(seed=7, flaw_share=0.1))
    return {"Level": [level for level, _ in rounds], "Map": [game_map for _, game_map in rounds]}


@pytest.mark.parametrize("kind", ["Level", "Map"])
def test_no_free_points_for_answers_to_other_requests(teacher_corpus, kind):
    """Teacher answers scored at the shipped defaults against valid answers to *other* requests
    of the same site: they must score below the old default demote threshold (0.6) on average,
    while a second teacher answer to the same request keeps its agreement."""
    requests = teacher_corpus[kind]
    teacher, registry, policy = Teacher(seed=11, flaw_share=0.1), ValidatorRegistry(), site_scoring(kind, {})
    first = [teacher.respond(r).content for r in requests]
    second = [teacher.respond(r).content for r in requests]
    checks = [registry.for_request(r) for r in requests]
    valid = [c(a).passed for c, a in zip(checks, first)]

    def decoys(i: int) -> list[str]:
        return [first[j] for j in range(len(first)) if j != i][-5:]

    others = [
        score_pair(
            first[i],
            first[j],
            response_format=requests[i]["response_format"],
            policy=policy,
            validator=checks[i],
            decoys=decoys(i),
        )
        for i in range(len(requests))
        for j in range(len(requests))
        if i != j and valid[j]
    ]
    others = [r.score for r in others if r.comparable]
    selves = [
        score_pair(a, b, response_format=r["response_format"], policy=policy, validator=c, decoys=decoys(i))
        for i, (a, b, r, c) in enumerate(zip(first, second, requests, checks))
    ]
    self_scores = [r.score for r in selves if r.comparable]
    assert len(others) > 500 and len(self_scores) > 20
    assert statistics.mean(others) < 0.3 and sum(x >= 0.6 for x in others) / len(others) < 0.15
    assert statistics.mean(self_scores) > statistics.mean(others) + 0.3


def test_a_level_must_keep_the_requested_size_and_difficulty():
    request = level_request(3, 20, 12)
    check = ValidatorRegistry().for_request(request)
    level = {
        "name": "Level 3: The Hollow Keep",
        "difficulty": 3,
        "width": 20,
        "height": 12,
        "num_wall": 5,
        "num_enemies": 3,
        "time_countdown": 240,
        "n_retries_allowed": 3,
    }
    assert check(json.dumps(level)).passed
    assert check(json.dumps(level)).constrained == ("width", "height", "difficulty")
    for wrong in ({"width": 21}, {"height": 10}, {"difficulty": 4}):
        assert not check(json.dumps({**level, **wrong})).passed, wrong
    copy_request = level_request(3, 20, 12, last_levels=[level])
    assert not ValidatorRegistry().for_request(copy_request)(json.dumps(level)).passed  # not a copy of a given level


def test_validators_apply_by_response_type_and_shape_only():
    registry = ValidatorRegistry()
    assert schema_name(MAP_FORMAT) == "Map"
    assert registry.reference_for(MAP_FORMAT) == "understudy.jac_examples.rpg.request_checks:check_map"
    # Another program's `Map` (no level/walls/enemies) is not the showcase's.
    assert registry.reference_for(json_format({"type": "object", "properties": {"x": {}}}, name="Map")) is None
    assert registry.reference_for({"type": "json_object"}) is None
    # A site policy's validator wins; "none" switches the type's off.
    assert (
        registry.reference_for(MAP_FORMAT, "tests.routing.test_scoring:always") == "tests.routing.test_scoring:always"
    )
    assert registry.reference_for(MAP_FORMAT, "none") is None
    assert (
        ValidatorRegistry({"Thing": "tests.routing.test_scoring:always"}).reference_for(json_format({}))
        == "tests.routing.test_scoring:always"
    )


def always(answer: str, arguments) -> bool:
    """A validator for the registry tests (module:function)."""
    return True


MAP_SCHEMA = {
    "type": "object",
    "properties": {
        "level": {
            "type": "object",
            "properties": {"name": {"type": "string"}} | {k: {"type": "integer"} for k in LEVEL_INT_FIELDS},
        },
        "walls": {"type": "array", "items": {"type": "object"}},
        "small_obstacles": {"type": "array", "items": {"type": "object"}},
        "enemies": {"type": "array", "items": {"type": "object"}},
        "player_pos": {"type": "object"},
    },
    "required": ["level", "walls", "small_obstacles", "enemies", "player_pos"],
}
MAP_FORMAT = json_format(MAP_SCHEMA, name="Map")


# --- policy from configuration ------------------------------------------------------------


def test_scoring_policy_from_dict_merges_site_overrides():
    policy = ScoringPolicy.from_dict(
        {"number_tolerance": 0.2, "weights": {"semantic": 2.0}},  # a retired key is accepted and ignored
        {"creative_paths": ["walls", "level.*"], "decoys": 3},
    )
    assert policy.number_tolerance == 0.2 and policy.decoys == 3
    assert policy.creative_paths == ("walls", "level.*")
    with pytest.raises(ValueError, match="number_tolerence"):
        ScoringPolicy.from_dict({"number_tolerence": 0.2})
    with pytest.raises(ValueError, match="decoys must be int"):
        ScoringPolicy.from_dict({"decoys": "many"})


# --- semantic similarity with the real MiniLM model ---------------------------------------


@pytest.fixture(scope="module")
def minilm():
    """A loaded embedder (~5 s once); loading must not open a single network connection."""

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access while loading the embedder: {args}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", no_network)
        patch.setattr(socket, "create_connection", no_network)
        embedder = Embedder()
        embedder.load()
    return embedder


def test_semantic_paraphrase_beats_unrelated(minilm):
    upstream = "A cramped stone dungeon with winding walls and lurking enemies."
    paraphrase = "A tight stone dungeon full of twisting walls and hidden monsters."
    unrelated = "Quarterly revenue grew four percent on strong cloud sales."
    similarity = minilm.cosine_similarity
    close = score_pair(upstream, paraphrase, response_format=None, policy=POLICY, similarity=similarity)
    far = score_pair(upstream, unrelated, response_format=None, policy=POLICY, similarity=similarity)
    assert close.components["semantic"] > 0.6
    assert far.components["semantic"] < 0.3
    assert 0.0 <= far.score < close.score <= 1.0


def test_cosine_similarity_is_symmetric_and_one_for_identical_text(minilm):
    a, b = "Survive four waves in the dark.", "Escape the flooded crypt before dawn."
    assert minilm.cosine_similarity(a, a) == pytest.approx(1.0, abs=1e-5)
    assert math.isclose(minilm.cosine_similarity(a, b), minilm.cosine_similarity(b, a), abs_tol=1e-5)


def test_embedder_is_usable_from_several_threads(minilm):
    pairs = [(f"Level {i} is a dark crypt.", f"Level {i} is a gloomy tomb.") for i in range(4)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda p: minilm.cosine_similarity(*p), pairs))
    assert results == pytest.approx([minilm.cosine_similarity(*p) for p in pairs], abs=1e-5)


def test_embeddings_of_texts_seen_lately_are_kept_not_encoded_again(minilm, monkeypatch):
    a, b, c = "A crypt of bones.", "A tomb of dust.", "A meadow in spring."
    fresh = minilm.load().encode([a, b, c], normalize_embeddings=True, convert_to_numpy=True)
    encoded: list[str] = []
    real_encode = type(minilm.load()).encode

    def counting_encode(model, texts, **kwargs):
        encoded.extend(texts)
        return real_encode(model, texts, **kwargs)

    monkeypatch.setattr(type(minilm.load()), "encode", counting_encode)
    monkeypatch.setattr(minilm, "_cache", type(minilm._cache)())
    first = minilm.embed([a, b])
    again = minilm.embed([b, c, b])
    assert encoded == [a, b, c]  # b once, although asked for three times
    assert first == pytest.approx(fresh[:2], abs=1e-5)
    assert again == pytest.approx(fresh[[1, 2, 1]], abs=1e-5)  # the kept embedding is the encoded one
    # Bounded: the oldest text goes first; the control, a text still kept, is not encoded again.
    monkeypatch.setattr("understudy.routing.similarity.CACHE_TEXTS", 2)
    minilm.embed([a])  # last used: c, then b, then a; over the bound, c (the least recent) goes
    encoded.clear()
    minilm.embed([a, b])
    assert encoded == []
    minilm.embed([c])
    assert encoded == [c]


def test_shared_embedder_is_one_per_process_and_loads_once(monkeypatch):
    assert shared_embedder() is shared_embedder()
    assert shared_embedder().model_path == default_model_path()

    loads = []

    class SlowModel:
        def __init__(self, path, **kwargs):
            loads.append(kwargs)
            time.sleep(0.05)  # widen the race window

    import sentence_transformers

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", SlowModel)
    embedder = Embedder(model_path="/nonexistent/model")
    assert not embedder.loaded
    threads = [embedder.warm_up() for _ in range(4)]
    for thread in threads:
        thread.join()
    assert embedder.loaded
    assert len(loads) == 1 and loads[0]["local_files_only"] is True


def test_a_levels_title_is_left_to_its_validator_its_numbers_are_not():
    from understudy.routing.router import site_scoring

    request = level_request(1, 16, 10)
    check = ValidatorRegistry().for_request(request)
    level = {
        "name": "Level 1: The Gilded Mines",
        "difficulty": 1,
        "width": 16,
        "height": 10,
        "num_wall": 3,
        "num_enemies": 2,
        "time_countdown": 290,
        "n_retries_allowed": 4,
    }
    policy = site_scoring("Level", {})
    renamed = score_json(level, {**level, "name": "Level 1: The Frozen Bastion"}, policy=policy, validator=check)
    assert renamed.components["structural"] == 1.0 and renamed.score == 1.0
    assert renamed.components["compared_fields"] == 4  # num_wall, num_enemies, time_countdown, n_retries_allowed
    more_enemies = score_json(level, {**level, "num_enemies": 4}, policy=policy, validator=check)
    assert more_enemies.components["structural"] == 0.75 and more_enemies.score == 0.75
