"""An untrained base model decoding `Map` answers under the request's constraints.

What the request fixes (the echoed level, the wall and enemy counts, every position inside the
grid) is the decoder's business once the schema is tightened: a base model that has never seen
the task keeps all of it. The control: the same model under the request's own schema (what the
decoder had before) breaks some of it. In the default suite on the tiny random Llama (seconds);
on the bundled Gemma 3 270M base with `-m slow` (its rambling maps take minutes on 2 cores).
"""

from __future__ import annotations

import json

import pytest

from tests.support.showcase import map_request
from understudy.inference.checked_sampling import SamplingPolicy
from understudy.inference.local_model import LocalModels, Variant, checks_for
from understudy.training.config import default_gemma_gguf
from understudy.validators import ValidatorRegistry

LEVELS = [
    {
        "name": "Level 1: The Small Cellar",
        "difficulty": 1,
        "width": 6,
        "height": 5,
        "num_wall": 1,
        "num_enemies": 2,
        "time_countdown": 120,
        "n_retries_allowed": 3,
    },
    {
        "name": "Level 2: The Narrow Hall",
        "difficulty": 2,
        "width": 7,
        "height": 4,
        "num_wall": 2,
        "num_enemies": 1,
        "time_countdown": 150,
        "n_retries_allowed": 3,
    },
]
ONE_DRAW = SamplingPolicy(tries=1)  # the constraint alone, no re-draws


def bookkeeping_errors(answer: str, level: dict) -> list[str]:
    """What a map breaks of what its request fixed (empty: it keeps all of it)."""
    try:
        m = json.loads(answer)
    except ValueError:
        return ["not JSON"]
    errors = []
    if m.get("level") != level:
        errors.append("level not echoed")
    if len(m.get("walls") or []) != level["num_wall"]:
        errors.append("wall count")
    if len(m.get("enemies") or []) != level["num_enemies"]:
        errors.append("enemy count")
    positions = [m.get("player_pos")] + list(m.get("enemies") or []) + list(m.get("small_obstacles") or [])
    positions += [w.get(end) for w in m.get("walls") or [] if isinstance(w, dict) for end in ("start_pos", "end_pos")]
    for p in positions:
        if not (isinstance(p, dict) and 0 <= p.get("x", -1) < level["width"] and 0 <= p.get("y", -1) < level["height"]):
            errors.append(f"position {p} outside the grid")
    return errors


@pytest.fixture(scope="module", params=["tiny", pytest.param("gemma", marks=pytest.mark.slow)])
def base_answers(request, tiny_llama):
    models = LocalModels(str(tiny_llama[1]) if request.param == "tiny" else default_gemma_gguf(), n_threads=2)
    registry = ValidatorRegistry()
    try:
        out = []
        for level in LEVELS:
            call = {**map_request(level), "max_tokens": 600}
            validator = registry.for_request(call)
            constrained = models.complete_sync(call, Variant(None), checks_for(call, validator, ONE_DRAW))
            plain = models.complete_sync(call, Variant(None), checks_for(call, None, ONE_DRAW))
            out.append((level, constrained.text, plain.text))
        return out
    finally:
        models.close()


def test_the_bare_base_under_map_constraints_keeps_every_count_and_bound(base_answers):
    for level, constrained, _ in base_answers:
        assert bookkeeping_errors(constrained, level) == [], constrained


def test_the_control_without_them_breaks_some(base_answers):
    broken = [bookkeeping_errors(plain, level) for level, _, plain in base_answers]
    assert any(broken), [plain for _, _, plain in base_answers]
