"""What the RPG showcase registers for its response types beside its validators (entry points
in pyproject.toml, read by `understudy.response_types`): scoring defaults and a review rubric.
The product itself names no showcase type."""

from __future__ import annotations

# A map's layout and a level's title have many right answers, so they are left to the validator
# (which checks them against the request) instead of being compared with the upstream's.
MAP_SCORING = {"creative_paths": ["walls", "small_obstacles", "enemies", "player_pos", "level.name"]}
LEVEL_SCORING = {"creative_paths": ["name"]}

# Levels and maps are judged as games, not as generic answers.
REVIEW_RUBRIC = {
    "criteria": [
        {
            "name": "gameplay",
            "label": "Gameplay viability and fun",
            "description": "Can the level be played and won, and would it be fun to play?",
        },
        {
            "name": "structure",
            "label": "Structural correctness and consistency",
            "description": "Walls, obstacles, enemies and the player fit the grid and each other; fields agree.",
        },
        {
            "name": "constraints",
            "label": "Adherence to the requested constraints and theme",
            "description": "Difficulty, size, counts and theme are what the request asked for.",
        },
    ]
}
