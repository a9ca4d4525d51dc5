"""The offline teacher: prompt parsing, answers to real byLLM requests, flaws, and the Jac
level generator end to end against it on both byLLM transports."""

from __future__ import annotations

import json
import re
from collections import Counter

import httpx
import jsonschema
import pytest

from tests.conftest import FIXTURES_DIR
from understudy.jac_examples.rpg.runner import run_level_generator
from understudy.jac_examples.rpg.validator import validate_level, validate_map
from understudy.jac_examples.teacher.prompt import parse_request
from understudy.jac_examples.teacher.sites import Site, identify
from understudy.jac_examples.teacher.teacher import Teacher

CAPTURES = FIXTURES_DIR / "captures"


def _captured_requests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(CAPTURES.glob("*.jsonl")):
        for n, line in enumerate(path.read_text().splitlines()):
            if line.strip():
                record = json.loads(line)
                out.append((f"{path.stem}#{n}:{record['call_site']}", record))
    return out


def _level_request(difficulty=3, width=18, height=11, last=None) -> dict:
    last_repr = (
        "[]"
        if not last
        else f"[Level(name={last!r}, difficulty=2, width=16, height=10, num_wall=3, num_enemies=2, time_countdown=280, n_retries_allowed=3)]"
    )
    text = (
        "Create the next level of the game.\n\n"
        f"last_levels = ({last_repr}, '')\ndifficulty = ({difficulty}, '')\n"
        f"level_width = ({width}, '')\nlevel_height = ({height}, '')"
    )
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": text}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "Level", "schema": {"type": "object"}}},
    }


def _map_request(width=20, height=12, walls=6, enemies=4, difficulty=5) -> dict:
    level = f"Level(name='L', difficulty={difficulty}, width={width}, height={height}, num_wall={walls}, num_enemies={enemies}, time_countdown=200, n_retries_allowed=3)"
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": f"Lay out the map.\n\nlevel = ({level}, '')"}]},
        ],
        "response_format": {"type": "json_schema", "json_schema": {"name": "Map", "schema": {"type": "object"}}},
    }


# --------------------------------------------------------------------------- prompt parsing


def test_parse_prompt_0_6_parts_and_metadata():
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "sys"},
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "Header line one.\n\nStill header.\n\nlevel = (Level(name='A, b', difficulty=-2, tags=['x', 'y']), 'a sem')\nn = (3, '')",
                    },
                    {"type": "text", "text": "Schema requirements:\n- x (integer)"},
                ],
            },
            {"role": "user", "content": "Your previous response could not be used. ..."},
        ],
        "metadata": {"jac_caller_name": "create_next_map"},
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    req = parse_request(body)
    assert req.header == "Header line one.\n\nStill header."
    assert req.args["level"] == {"__type__": "Level", "name": "A, b", "difficulty": -2, "tags": ["x", "y"]}
    assert req.semstrs == {"level": "a sem", "n": ""}
    assert req.args["n"] == 3
    assert req.is_retry and req.stream and req.include_usage
    assert req.function_name == "create_next_map"


def test_parse_prompt_unreadable_repr_kept_as_text():
    text = "f\n\nkind = (<EnemyKind.GOBLIN: 'goblin'>, '')\nselfie = (Level(name='x'), None)"
    req = parse_request({"messages": [{"role": "user", "content": text}]})
    assert req.args["kind"] == "<EnemyKind.GOBLIN: 'goblin'>"
    assert req.args["selfie"] == {"__type__": "Level", "name": "x"}
    assert req.function_name == "f"


def test_identify_without_names():
    assert identify(parse_request(_level_request())) is Site.LEVEL
    assert identify(parse_request(_map_request())) is Site.MAP


# --------------------------------------------------------------------------- answers


def test_level_follows_arguments():
    teacher = Teacher(seed=1, flaw_share=0)
    level = json.loads(teacher.respond(_level_request(7, 24, 13, last="Level 4: The Old Keep")).content)
    assert (level["difficulty"], level["width"], level["height"]) == (7, 24, 13)
    assert level["name"].startswith("Level 5:")
    assert validate_level(level, expected_width=24, expected_height=13, expected_difficulty=7).passed


@pytest.mark.parametrize(("w", "h", "walls", "enemies"), [(20, 12, 6, 4), (8, 6, 3, 5), (40, 30, 30, 12), (5, 5, 6, 2)])
def test_maps_are_valid_and_varied(w, h, walls, enemies):
    teacher = Teacher(seed=2, flaw_share=0)
    maps = [json.loads(teacher.respond(_map_request(w, h, walls, enemies)).content) for _ in range(5)]
    for m in maps:
        assert validate_map(m, expected_width=w, expected_height=h).passed, validate_map(m).to_dict()
    assert len({json.dumps(m, sort_keys=True) for m in maps}) == 5


def test_seeded_and_reproducible():
    def run(seed):
        teacher = Teacher(seed=seed, flaw_share=0.3)
        return [teacher.respond(_map_request()).content for _ in range(6)]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_flaw_share_one_flaws_every_typed_answer():
    teacher = Teacher(seed=3, flaw_share=1.0)
    kinds = Counter()
    for _ in range(40):
        reply = teacher.respond(_map_request())
        kinds[reply.flaw] += 1
        assert not validate_map(reply.content).passed
    assert set(kinds) == {"unreachable", "missing_spawn", "wrong_count", "malformed"}
    for _ in range(20):
        reply = teacher.respond(_level_request())
        assert reply.flaw in {"wrong_size", "bad_counts", "malformed"}
        assert not validate_level(reply.content, expected_width=18, expected_height=11).passed


def test_flaw_share_is_roughly_respected_and_retries_are_clean():
    teacher = Teacher(seed=4, flaw_share=0.1)
    flawed = sum(teacher.respond(_map_request()).flaw is not None for _ in range(300))
    assert 10 <= flawed <= 55
    retry = _map_request()
    retry["messages"].append({"role": "user", "content": "Your previous response could not be used. Try again."})
    strict = Teacher(seed=4, flaw_share=1.0)
    assert all(strict.respond(retry).flaw is None for _ in range(10))


# --------------------------------------------------------------------------- over HTTP


def _sse_events(text: str) -> list:
    events = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def _check_reply(record: dict, response: httpx.Response) -> None:
    body = record["request"]["body"]
    assert response.status_code == 200, response.text
    if body.get("stream"):
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(response.text)
        assert all(e["object"] == "chat.completion.chunk" and e["model"] == body["model"] for e in events)
        content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
        assert content
        wants_usage = (body.get("stream_options") or {}).get("include_usage")
        assert any("usage" in e for e in events) == bool(wants_usage)
        return
    data = response.json()
    assert data["object"] == "chat.completion" and data["model"] == body["model"]
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"] > 0
    message = data["choices"][0]["message"]
    req = parse_request(body)
    if req.tools:
        (call,) = message["tool_calls"]
        tool = next(t["function"] for t in body["tools"] if t["function"]["name"] == call["function"]["name"])
        jsonschema.validate(json.loads(call["function"]["arguments"]), tool["parameters"])
        expected = "finish_tool" if record["tool_results_in_history"] else body["tools"][0]["function"]["name"]
        assert call["function"]["name"] == expected
        assert data["choices"][0]["finish_reason"] == "tool_calls"
        return
    assert isinstance(message["content"], str) and message["content"]
    if req.schema is not None:
        value = json.loads(message["content"])
        jsonschema.validate(value, req.schema)
        if req.schema_name == "Map":
            assert validate_map(value).passed, validate_map(value).to_dict()


def test_replays_every_captured_byllm_request(start_teacher):
    teacher = start_teacher(seed=5, flaw_share=0.0)
    records = _captured_requests()
    assert len(records) > 50
    with httpx.Client(base_url=teacher.base_url, timeout=10) as client:
        for name, record in records:
            response = client.post("/v1/chat/completions", json=record["request"]["body"])
            try:
                _check_reply(record, response)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from exc


def test_http_extras(start_teacher):
    teacher = start_teacher(seed=6, flaw_share=1.0)
    with httpx.Client(base_url=teacher.base_url, timeout=10) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/v1/models").json()["data"][0]["id"]
        assert client.post("/v1/chat/completions", content=b"{nope").status_code == 400
        assert client.post("/v1/chat/completions", json={"model": "x"}).status_code == 400
        flawed = client.post("/chat/completions", json=_map_request())
        assert flawed.status_code == 200 and flawed.headers["x-teacher-flaw"]
        generic = client.post(
            "/v1/chat/completions", json={"model": "x", "messages": [{"role": "user", "content": "Say hi"}]}
        )
        assert generic.json()["choices"][0]["message"]["content"]


# --------------------------------------------------------------------------- end to end


GRID_ROW = re.compile(r"^[#oEP.]+$")


@pytest.mark.parametrize("transport", ["litellm", "http_client"])
def test_jac_level_generator_against_teacher(start_teacher, tmp_path, transport):
    teacher = start_teacher(seed=8, flaw_share=0.0)
    if transport == "litellm":
        env = {"OPENAI_BASE_URL": f"{teacher.base_url}/v1", "OPENAI_API_KEY": "sk-test"}
    else:
        env = {
            "UNDERSTUDY_RPG_HTTP_CLIENT": "1",
            "UNDERSTUDY_RPG_BASE_URL": f"{teacher.base_url}/v1/chat/completions",
            "OPENAI_API_KEY": "sk-test",
        }
    result = run_level_generator(2, env, timeout=120, workdir=tmp_path / "run")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    headers = [line for line in lines if line.startswith("=== Level ")]
    assert len(headers) == 2
    assert lines.count("validator: passed") == 2
    sizes = [tuple(map(int, re.search(r"(\d+)x(\d+)", h).groups())) for h in headers]
    rows = [line for line in lines if GRID_ROW.match(line)]
    assert len(rows) == sum(h for _, h in sizes)
    assert sum(line.startswith("rating: ") for line in lines) == 2
    assert sum(line.startswith("enemies: ") for line in lines) == 2


def test_jac_level_generator_fails_a_level_that_ignores_its_requested_difficulty(start_teacher, tmp_path):
    """The showcase checks each level against what was asked (not only the map against the level):
    a teacher whose levels come back at difficulty 15 must print FAILED, never `passed`."""
    from tests.support.fake_upstream import FakeUpstream

    teacher = start_teacher(seed=8, flaw_share=0.0)

    def too_hard(body: dict) -> str:
        answer = httpx.post(f"{teacher.base_url}/v1/chat/completions", json=body, timeout=30).json()
        content = answer["choices"][0]["message"]["content"]
        if (body.get("response_format") or {}).get("json_schema", {}).get("name") == "Level":
            content = json.dumps({**json.loads(content), "difficulty": 15})
        return content

    with FakeUpstream(reply=too_hard) as upstream:
        result = run_level_generator(
            1, {"OPENAI_BASE_URL": upstream.url, "OPENAI_API_KEY": "sk-test"}, timeout=120, workdir=tmp_path / "run"
        )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "validator: passed" not in lines
    [verdict] = [line for line in lines if line.startswith("validator: ")]
    assert verdict.startswith("validator: FAILED") and "level.difficulty" in verdict
    assert "map." not in verdict  # the map was laid out for the level it was given
