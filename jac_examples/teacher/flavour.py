"""The teacher's non-geometric answers: level descriptions, enemy picks, difficulty ratings
and generic text for prompts it does not recognise.

Each is derived from the call's arguments (so answers track the input, as a real model's
would) plus seeded variation (so a corpus is not one answer repeated).
"""

from __future__ import annotations

import random
from typing import Any

from understudy.jac_examples.rpg.mapmodel import as_int, layout_from, reachable

_MOODS = ("damp", "echoing", "moonlit", "smoke-filled", "overgrown", "ice-cold", "cramped", "vast")
_SETTINGS = ("stone halls", "twisting corridors", "ruined chambers", "collapsed galleries", "flooded tunnels")
_THREATS = (
    "lurking in the shadows",
    "patrolling the corridors",
    "waiting behind every corner",
    "guarding the exit",
    "hunting in packs",
)


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _n(count: int | None, noun: str) -> str:
    if count is None:
        return f"an unknown number of {noun}s"
    return f"{count} {noun}" + ("" if count == 1 else "s")


def describe_level(rng: random.Random, level: Any) -> str:
    """Two sentences about a level, built from its fields."""
    lv = level if isinstance(level, dict) else {}
    name = str(lv.get("name") or "This level")
    w, h = as_int(lv.get("width")) or 0, as_int(lv.get("height")) or 0
    enemies, walls = as_int(lv.get("num_enemies")), as_int(lv.get("num_wall"))
    d = as_int(lv.get("difficulty"))
    size = f"{w}x{h} " if w and h else ""
    first = rng.choice(
        (
            f"{name} is {_a(rng.choice(_MOODS))} {size}maze of {rng.choice(_SETTINGS)}",
            f"In {name}, {rng.choice(_MOODS)} {rng.choice(_SETTINGS)} stretch across a {size}grid",
            f"{name} drops you into {rng.choice(_MOODS)} {rng.choice(_SETTINGS)} ({size.strip() or 'uncharted'})",
        )
    )
    if walls is not None:
        first += f" split by {_n(walls, 'wall')}"
    opener = rng.choice(("Watch out for", "Expect", "Brace for"))
    second = f"{opener} {_n(enemies, 'enemy').replace('enemys', 'enemies')} {rng.choice(_THREATS)}"
    if d is not None:
        second += f" in this difficulty {d} challenge"
    timer = as_int(lv.get("time_countdown"))
    if timer:
        second += f" with {timer} seconds on the clock"
    return f"{first}. {second}."


def pick_enemies(rng: random.Random, members: list[Any], level: Any) -> list[Any]:
    """A few enemy kinds for a level; later enum members count as tougher and get likelier
    as difficulty rises."""
    if not members:
        return []
    d = as_int(level.get("difficulty")) if isinstance(level, dict) else None
    d = max(1, min(10, d if d is not None else 5))
    k = max(1, min(len(members), 1 + d // 3 + rng.randint(0, 1)))
    weights = [1.0 + i * d / 5 for i in range(len(members))]
    pool, chosen = list(zip(members, weights)), []
    for _ in range(k):
        pick = rng.choices(range(len(pool)), weights=[wt for _, wt in pool])[0]
        chosen.append(pool.pop(pick)[0])
    return chosen


def rate_map(rng: random.Random, map_like: Any) -> int:
    """A 1-10 difficulty rating from the map's level difficulty, enemy density and openness."""
    lv = map_like.get("level") if isinstance(map_like, dict) else None
    d = as_int(lv.get("difficulty")) if isinstance(lv, dict) else None
    try:
        layout = layout_from(map_like)
    except ValueError:
        return max(1, min(10, (d or 5) + rng.choice((-1, 0, 1))))
    open_cells = max(1, len(layout.open_cells()))
    density = len(layout.enemies) / open_cells  # enemies per open cell, ~0.01-0.05 in practice
    spread = 0.0
    if layout.player is not None:
        seen = reachable(layout.player, layout.blocked, layout.width, layout.height)
        # A map that is mostly corridor (few cells reachable per blocked cell) plays harder.
        spread = 1.0 - len(seen) / open_cells
    score = 1 + 0.8 * (d if d is not None else 5) + 80 * density + 3 * spread + rng.choice((-0.5, 0, 0.5))
    return max(1, min(10, round(score)))


def generic_text(rng: random.Random, header: str, args: dict[str, Any]) -> str:
    """A short, plausible answer for a prompt the teacher does not know."""
    # Name what the call is about: an object's `name` (e.g. a Level), else a string argument.
    named = (v.get("name") for v in args.values() if isinstance(v, dict))
    strings = (v for v in args.values() if isinstance(v, str))
    subject = next((s for s in (*named, *strings) if isinstance(s, str) and s), "the quest")
    return rng.choice(
        (
            f"{subject}: {_a(rng.choice(_MOODS))} tale of {rng.choice(_SETTINGS)}.",
            f"Beware {subject}, with foes {rng.choice(_THREATS)}.",
            f"{subject} awaits, {rng.choice(_MOODS)} and full of secrets.",
        )
    )
