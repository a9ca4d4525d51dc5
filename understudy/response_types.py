"""What other packages register per response type (the request's json_schema name).

A program's answers of one type can come with more than a validator: scoring defaults (which
fields have many right answers), a review rubric, a renderer that draws an answer for the
review page. Packages declare them as entry points, the way they declare validators
(`understudy.validators`), so nothing in the product names a program's types; the RPG
showcase registers its `Level` and `Map` this way in pyproject.toml.

- `understudy.scoring_defaults`: `module:attribute`, a dict of scoring settings
  (`routing.scoring.ScoringPolicy` fields), layered under a site's own overrides;
- `understudy.review_rubrics`: `module:attribute`, a rubric ({"criteria": [...]});
- `understudy.review_renderers`: `module:function(answer_value, png_path)`.
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from typing import Any

SCORING_DEFAULTS = "understudy.scoring_defaults"
REVIEW_RUBRICS = "understudy.review_rubrics"
REVIEW_RENDERERS = "understudy.review_renderers"


@functools.cache
def registered(group: str) -> dict[str, str]:
    """Response type -> `module:attribute`, as the installed packages declare them (read once)."""
    return {ep.name: ep.value for ep in entry_points(group=group)}


def registered_for(group: str, type_name: str | None) -> Any | None:
    """What is registered in `group` for this response type, loaded (None: nothing is)."""
    reference = registered(group).get(type_name or "")
    return None if reference is None else load(reference)


def load(reference: str) -> Any:
    """What a `module:attribute` reference names (attribute may be dotted); ImportError or
    AttributeError when it names nothing."""
    module_name, _, attribute = reference.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target
