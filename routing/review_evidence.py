"""What the blind human review says about a version, as the promotion policy weighs it.

The review itself (rubrics, drawing pairs, the page, results) is `reporting.reviews`; this
is the part routing's state machine needs: the judgments unblinded, and one number per
reviewed pair (`review_differences`), read by the router and the report alike.
"""

from __future__ import annotations

import json
from typing import Any

from understudy.db import Cursor

SCALE = (1, 5)  # the rubric's score scale


def judgment_rows(cur: Cursor, site_id: str, version: int | None = None) -> list[dict[str, Any]]:
    """Judgments unblinded: scores and preference per judgment as local / upstream."""
    sql = (
        "SELECT j.item_id, j.reviewer, j.scores, j.preference, j.local_side, i.version FROM review_judgments j "
        "JOIN review_items i ON i.id = j.item_id WHERE j.site_id = ?"
    )
    params: list[Any] = [site_id]
    if version is not None:
        sql += " AND i.version = ?"
        params.append(version)
    out = []
    for item_id, reviewer, scores_json, preference, local_side, item_version in cur.execute(
        sql + " ORDER BY j.ts", params
    ).fetchall():
        scores = json.loads(scores_json)
        up_side = "B" if local_side == "A" else "A"
        out.append(
            {
                "item": item_id,
                "reviewer": reviewer,
                "version": item_version,
                "local": {k: v[local_side] for k, v in scores.items()},
                "upstream": {k: v[up_side] for k, v in scores.items()},
                "preferred": "tie" if preference == "tie" else ("local" if preference == local_side else "upstream"),
            }
        )
    return out


def review_differences(cur: Cursor, site_id: str, version: int) -> list[float]:
    """One number per reviewed pair of `version`, in the order pairs were first judged: local
    minus upstream score averaged over the rubric's criteria and the pair's reviewers, scaled
    from the 1-5 scale to [-1, 1]. The pair is the unit because pairs are drawn at random and a
    shared pair's reviewers judge the same answers. What the promotion policy weighs on a
    creative site (`routing.policy`, with its confidence sequence and margin)."""
    span = SCALE[1] - SCALE[0]
    by_pair: dict[str, list[float]] = {}
    for row in judgment_rows(cur, site_id, version):
        diffs = [row["local"][name] - row["upstream"][name] for name in row["local"] if name in row["upstream"]]
        if diffs:
            by_pair.setdefault(row["item"], []).append(sum(diffs) / len(diffs) / span)
    return [sum(values) / len(values) for values in by_pair.values()]
