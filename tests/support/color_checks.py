"""A task validator for the tests' `Color` site, with named checks (the eval's per-check breakdown)."""

from __future__ import annotations

import json

PALETTE = ("blue", "green", "yellow", "red", "white", "navy", "lime", "amber", "purple", "cyan", "orange", "teal")


def check_color(answer: str, arguments) -> dict:
    try:
        color = json.loads(answer).get("color")
    except (ValueError, AttributeError):
        color = None
    checks = [
        {"name": "known_color", "passed": color in PALETTE},
        {"name": "one_word", "passed": isinstance(color, str) and color.isalpha()},
    ]
    return {"passed": all(c["passed"] for c in checks), "checks": checks}
