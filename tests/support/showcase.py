"""byLLM-shaped requests for the RPG showcase's typed call sites, built without running Jac.

The text layout and the `Level` / `Map` response schemas are taken from a real byLLM 0.6.19
capture (tests/fixtures/byllm), so the requests read exactly as the proxy, the validators and
the offline teacher see them; only the argument values are chosen here.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from tests.conftest import FIXTURES_DIR

SYSTEM = (
    "    This is a task you must complete by returning only the output.\n"
    "    Do not include explanations, code, or extra text\u2014only the result.\n    "
)
LEVEL_HEADER = "Create the next level, a bit harder than the previous ones and not a copy of them."
MAP_HEADER = "Lay out the map for the given level, following its size and counts exactly."


@cache
def _response_formats() -> dict[str, dict[str, Any]]:
    formats = {}
    for line in (FIXTURES_DIR / "captures" / "b0619_litellm_env_level_gen.jsonl").read_text().splitlines():
        body = json.loads(line)["request"]["body"]
        name = ((body.get("response_format") or {}).get("json_schema") or {}).get("name")
        if name in ("Level", "Map"):
            formats[name] = body["response_format"]
    return formats


def level_repr(level: dict[str, Any]) -> str:
    return "Level(" + ", ".join(f"{k}={v!r}" for k, v in level.items()) + ")"


def _request(name: str, header: str, args: list[tuple[str, str]]) -> dict[str, Any]:
    lines = "\n".join(f"{arg} = ({value}, '')" for arg, value in args)
    return {
        "model": "gpt-4o-mini",
        "temperature": 0.7,
        "response_format": _response_formats()[name],
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": [{"type": "text", "text": f"{header}\n\n{lines}"}]},
        ],
    }


def level_request(difficulty: int, width: int, height: int, last_levels: list[dict[str, Any]] = ()) -> dict[str, Any]:
    levels = "[" + ", ".join(level_repr(lv) for lv in last_levels) + "]"
    return _request(
        "Level",
        LEVEL_HEADER,
        [
            ("last_levels", levels),
            ("difficulty", str(difficulty)),
            ("level_width", str(width)),
            ("level_height", str(height)),
        ],
    )


def map_request(level: dict[str, Any]) -> dict[str, Any]:
    return _request("Map", MAP_HEADER, [("level", level_repr(level))])


def showcase_rounds(runs: int, levels: int, teacher) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(Level request, Map request) per round of `runs` games, as the showcase plays them:
    difficulty and size rise each round, each map is for the level the teacher just made."""
    out = []
    for _ in range(runs):
        last: list[dict[str, Any]] = []
        for i in range(levels):
            level_req = level_request(min(10, 1 + i), 16 + 2 * min(i, 6), 10 + min(i, 6), last[-3:])
            answer = teacher.respond(level_req).content
            try:
                level = json.loads(answer)
            except ValueError:
                continue
            if not isinstance(level, dict) or not {"width", "height"} <= level.keys():
                continue
            out.append((level_req, map_request(level)))
            last.append(level)
    return out
