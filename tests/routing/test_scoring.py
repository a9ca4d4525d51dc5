"""Shadow scoring: each component on its own, then the gate, creative paths and real embeddings."""

from __future__ import annotations

import json
import math
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from routing.scoring import AgreementScore, ScoringPolicy, score_pair
from routing.similarity import Embedder, default_model_path, shared_embedder
from routing.validators import ValidatorRegistry, default_registry, schema_name

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


def test_validator_failure_scores_zero_whatever_the_similarity():
    text = '{"name": "Cave", "difficulty": 3}'

    def reject(_text: str) -> tuple[bool, dict]:
        return False, {"why": "no exit"}

    result = score_pair(
        text,
        text,
        response_format=json_format(LEVEL_SCHEMA),
        policy=POLICY,
        validator=reject,
        similarity=lambda a, b: 1.0,
    )
    assert result.score == 0.0
    assert result.local_valid is False
    assert result.components["parse_valid"] is True
    assert result.components["validator"] is False
    assert json.loads(result.components["validator_detail"]) == {"why": "no exit"}


def test_a_crashing_validator_fails_closed():
    def boom(_text: str) -> tuple[bool, dict]:
        raise RuntimeError("bug")

    text = '{"name": "Cave", "difficulty": 3}'
    result = score_pair(text, text, response_format=json_format(LEVEL_SCHEMA), policy=POLICY, validator=boom)
    assert result.score == 0.0 and result.local_valid is False
    assert "bug" in result.components["validator_detail"]


def test_passing_validator_is_recorded_and_does_not_change_the_score():
    text = '{"name": "Cave", "difficulty": 3}'
    result = score_pair(
        text, text, response_format=json_format(LEVEL_SCHEMA), policy=POLICY, validator=lambda t: (True, {})
    )
    assert result.components["validator"] is True
    assert result.score == 1.0 and result.local_valid is True


def test_unusable_upstream_answer_is_not_comparable():
    result = score_pair("{oops", '{"a": 1}', response_format={"type": "json_object"}, policy=POLICY)
    assert result.comparable is False and result.local_valid is True and result.score == 0.0
    text_result = score_pair("", "some answer", response_format=None, policy=POLICY)
    assert text_result.comparable is False and text_result.local_valid is True


def test_plain_text_sites_are_valid_unless_empty():
    assert score_pair("Hi there", "hi  there", response_format=None, policy=POLICY).score == 1.0
    assert score_pair("Hi", "", response_format={"type": "text"}, policy=POLICY).local_valid is False


# --- creative paths with the real RPG map validator ---------------------------------------

LEVEL_INT_FIELDS = (
    "difficulty", "width", "height", "num_wall", "num_enemies", "time_countdown", "n_retries_allowed"
)
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
RPG_POLICY = ScoringPolicy(creative_paths=("walls", "small_obstacles", "enemies", "player_pos"))


def pos(x: int, y: int) -> dict:
    return {"x": x, "y": y}


def rpg_map(walls: list, obstacles: list, enemies: list, player: dict, **level) -> dict:
    fields = {
        "name": "Crypt",
        "difficulty": 3,
        "width": 10,
        "height": 10,
        "num_wall": len(walls),
        "num_enemies": len(enemies),
        "time_countdown": 200,
        "n_retries_allowed": 3,
    }
    return {
        "level": fields | level,
        "walls": walls,
        "small_obstacles": obstacles,
        "enemies": enemies,
        "player_pos": player,
    }


UPSTREAM_MAP = rpg_map(
    walls=[{"start_pos": pos(2, 2), "end_pos": pos(2, 5)}, {"start_pos": pos(5, 1), "end_pos": pos(8, 1)}],
    obstacles=[pos(5, 5)],
    enemies=[pos(7, 7), pos(8, 3)],
    player=pos(0, 0),
)
# Just as playable, laid out differently.
OTHER_VALID_MAP = rpg_map(
    walls=[{"start_pos": pos(4, 3), "end_pos": pos(4, 6)}, {"start_pos": pos(6, 8), "end_pos": pos(9, 8)}],
    obstacles=[pos(1, 7), pos(6, 2)],
    enemies=[pos(8, 5), pos(3, 9)],
    player=pos(9, 0),
)


@pytest.fixture(scope="module")
def map_validator():
    validator = default_registry().for_response_format(MAP_FORMAT)
    assert validator is not None
    return validator


def score_maps(upstream: dict, local: dict, policy: ScoringPolicy, validator) -> AgreementScore:
    return score_pair(
        json.dumps(upstream), json.dumps(local), response_format=MAP_FORMAT, policy=policy, validator=validator
    )


def test_creative_paths_are_judged_by_shape_not_equality(map_validator):
    result = score_maps(UPSTREAM_MAP, OTHER_VALID_MAP, RPG_POLICY, map_validator)
    assert result.components["validator"] is True
    assert result.components["structural"] == 1.0  # only `level` counts, and it matches
    assert result.components["creative"] == 1.0  # same types, list lengths within tolerance
    assert result.score == 1.0

    without_creative = score_maps(UPSTREAM_MAP, OTHER_VALID_MAP, ScoringPolicy(), map_validator)
    assert "creative" not in without_creative.components
    assert without_creative.score < 0.5


def test_creative_lists_need_similar_lengths(map_validator):
    crowded = rpg_map(
        walls=OTHER_VALID_MAP["walls"],
        obstacles=[pos(1, 7), pos(6, 2), pos(1, 1), pos(3, 3), pos(9, 9)],  # 5 vs upstream's 1
        enemies=OTHER_VALID_MAP["enemies"],
        player=pos(9, 0),
    )
    result = score_maps(UPSTREAM_MAP, crowded, RPG_POLICY, map_validator)
    assert result.components["validator"] is True
    assert result.components["creative"] == pytest.approx(3 / 4)


def test_an_unplayable_map_scores_zero_even_when_identical(map_validator):
    # The enemy sits inside a wall: the upstream's mistake copied exactly is still a mistake.
    wall = {"start_pos": pos(2, 2), "end_pos": pos(2, 5)}
    broken = rpg_map(walls=[wall], obstacles=[], enemies=[pos(2, 3)], player=pos(0, 0))
    result = score_maps(broken, broken, RPG_POLICY, map_validator)
    assert result.score == 0.0 and result.local_valid is False
    checks = json.loads(result.components["validator_detail"])["checks"]
    assert any(c["name"] == "enemy_placement" and not c["passed"] for c in checks)


def test_registry_matches_sites_by_schema_name():
    assert schema_name(MAP_FORMAT) == "Map"
    assert schema_name({"type": "json_object"}) is None
    registry = ValidatorRegistry()
    assert registry.get("Map") is None
    registry.register_factory("Map", lambda: None)  # e.g. the validator's package is missing
    assert registry.for_response_format(MAP_FORMAT) is None
    registry.register("Map", lambda text: (True, {}))
    assert registry.for_response_format(MAP_FORMAT)("{}") == (True, {})


# --- policy from configuration ------------------------------------------------------------


def test_scoring_policy_from_dict_merges_site_overrides():
    policy = ScoringPolicy.from_dict(
        {"number_tolerance": 0.2, "weights": {"semantic": 2.0}},
        {"creative_paths": ["walls", "level.*"], "weights": {"creative": 0.5}},
    )
    assert policy.number_tolerance == 0.2
    assert policy.creative_paths == ("walls", "level.*")
    assert policy.weights == {"structural": 1.0, "creative": 0.5, "semantic": 2.0}
    assert policy.is_creative(("level", "name")) and not policy.is_creative(("level",))
    with pytest.raises(ValueError, match="number_tolerence"):
        ScoringPolicy.from_dict({"number_tolerence": 0.2})


def test_weights_combine_components(map_validator):
    crowded = json.loads(json.dumps(OTHER_VALID_MAP))
    crowded["small_obstacles"] += [pos(1, 1), pos(3, 3), pos(9, 9)]  # creative 3/4, structural 1
    heavy_creative = ScoringPolicy(creative_paths=RPG_POLICY.creative_paths, weights={"creative": 3.0})
    assert heavy_creative.weights == {"structural": 1.0, "creative": 3.0, "semantic": 1.0}
    result = score_maps(UPSTREAM_MAP, crowded, heavy_creative, map_validator)
    assert result.score == pytest.approx((1.0 * 1 + 3.0 * 0.75) / 4)


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


def test_a_levels_title_is_creative_by_default_its_numbers_are_not():
    from routing.router import site_scoring

    level = {"name": "Level 1: The Gilded Mines", "difficulty": 1, "width": 16, "height": 10, "num_wall": 3,
             "num_enemies": 2, "time_countdown": 290, "n_retries_allowed": 4}
    policy = site_scoring("Level", {})
    renamed = score_json(level, {**level, "name": "Level 1: The Frozen Bastion"}, policy=policy)
    assert renamed.components["structural"] == 1.0 and renamed.components["creative"] == 1.0
    assert renamed.score == 1.0
    more_enemies = score_json(level, {**level, "num_enemies": 4}, policy=policy)
    assert more_enemies.components["structural"] < 1.0 and more_enemies.score < 1.0
