"""Deliberately flawed teacher outputs, so dataset filtering has something to filter.

Whether a response is flawed depends only on the teacher's seed and its request counter
(`is_flawed`), so a corpus run is reproducible. The flaw kinds are the mistakes a real model
makes on these call sites:

- Map: `unreachable` (an open cell walled off by obstacles), `missing_spawn` (no
  `player_pos`), `wrong_count` (enemies or walls disagree with the level), `malformed`
  (truncated JSON);
- Level: `wrong_size` (not the requested width/height), `bad_counts` (negative enemies or a
  difficulty outside 1-10), `malformed`;
- other typed outputs: `out_of_range` for ints, `malformed`;
- level descriptions: `wrong_facts` (numbers that contradict the level).

Each function takes the good value and returns `(content, kind)` where `content` is the
exact text the teacher will send.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from understudy.jac_examples.rpg.mapmodel import as_int, layout_from, neighbours


def is_flawed(seed: int, counter: int, share: float) -> bool:
    """Deterministic per (seed, counter): true for about `share` of counters."""
    if share <= 0:
        return False
    return random.Random(f"flaw:{seed}:{counter}").random() < share


def malformed(rng: random.Random, value: Any) -> str:
    """The value's JSON cut off mid-way, as a model that ran out of tokens would emit it."""
    text = json.dumps(value)
    return text[: rng.randint(max(1, len(text) // 3), max(2, 2 * len(text) // 3))]


def _enclose_open_cell(rng: random.Random, m: dict[str, Any]) -> bool:
    """Surround one open, empty cell with obstacles; False when no cell allows it."""
    layout = layout_from(m)
    occupied = set(layout.enemies) | ({layout.player} if layout.player else set())
    blocked = layout.blocked
    cells = sorted(layout.open_cells() - occupied)
    rng.shuffle(cells)
    for cell in cells:
        ring = list(neighbours(cell, layout.width, layout.height))
        if any(n in occupied for n in ring):
            continue
        m["small_obstacles"] += [{"x": x, "y": y} for x, y in ring if (x, y) not in blocked]
        return True
    return False


def flawed_map(rng: random.Random, good: dict[str, Any]) -> tuple[str, str]:
    m = copy.deepcopy(good)
    kind = rng.choice(("unreachable", "missing_spawn", "wrong_count", "malformed"))
    if kind == "unreachable" and not _enclose_open_cell(rng, m):
        kind = "wrong_count"
    if kind == "missing_spawn":
        m.pop("player_pos", None)
    elif kind == "wrong_count":
        if m["enemies"]:
            m["enemies"].pop(rng.randrange(len(m["enemies"])))
        elif m["walls"]:
            m["walls"].pop()
        else:
            m["enemies"].append(dict(m["player_pos"]))
    elif kind == "malformed":
        return malformed(rng, good), kind
    return json.dumps(m), kind


def flawed_level(rng: random.Random, good: dict[str, Any]) -> tuple[str, str]:
    lv = dict(good)
    kind = rng.choice(("wrong_size", "bad_counts", "malformed"))
    if kind == "wrong_size":
        lv["width"] = max(1, lv.get("width", 20) + rng.choice((-7, -3, 4, 9)))
        lv["height"] = max(1, lv.get("height", 20) + rng.choice((-5, 3, 6)))
    elif kind == "bad_counts":
        if rng.random() < 0.5:
            lv["num_enemies"] = -rng.randint(1, 3)
        else:
            lv["difficulty"] = rng.choice((0, 11, 15))
    else:
        return malformed(rng, good), kind
    return json.dumps(lv), kind


def flawed_typed(rng: random.Random, good: Any) -> tuple[str, str]:
    """Ints (bare or in byLLM's wrapper) go out of range; anything else gets truncated."""
    if isinstance(good, dict) and len(good) == 1:
        ((key, inner),) = good.items()
        if isinstance(inner, int) and not isinstance(inner, bool):
            return json.dumps({key: rng.choice((0, -2, 11, 42))}), "out_of_range"
    return malformed(rng, good), "malformed"


def flawed_description(rng: random.Random, level: dict[str, Any], describe) -> tuple[str, str]:
    """A description of a level with contradicting numbers (a hallucinated answer)."""
    wrong = dict(level)
    wrong["num_enemies"] = (as_int(wrong.get("num_enemies")) or 0) + rng.randint(3, 9)
    wrong["num_wall"] = max(0, (as_int(wrong.get("num_wall")) or 0) - rng.randint(1, 4))
    return describe(rng, wrong), "wrong_facts"
