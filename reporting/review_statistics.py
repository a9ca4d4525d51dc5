"""The numbers of a blind review: means with t intervals, shares with Wilson intervals,
Krippendorff's alpha on the pairs several reviewers judged, and one wording for them in the CLI
and the report. Pure functions of judgment rows (`routing.review_evidence.judgment_rows`);
the protocol and its storage are `reporting.reviews`."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Literal

from understudy.routing.review_evidence import SCALE

Z95 = 1.959963984540054


def summary(rows: list[dict[str, Any]], rubric: dict[str, Any]) -> dict[str, Any]:
    criteria = {}
    for c in rubric["criteria"]:
        name = c["name"]
        local = [r["local"][name] for r in rows if name in r["local"]]
        upstream = [r["upstream"][name] for r in rows if name in r["upstream"]]
        diff = [r["local"][name] - r["upstream"][name] for r in rows if name in r["local"]]
        criteria[name] = {
            "label": c["label"],
            "n": len(local),
            "upstream": mean_interval(upstream),
            "local": mean_interval(local),
            "difference": mean_interval(diff),
            "alpha": _alpha_scores(rows, name),
        }
    n = len(rows)
    shares = {k: wilson(sum(r["preferred"] == k for r in rows), n) for k in ("local", "upstream", "tie")}
    return {
        "judgments": n,
        "reviewers": sorted({r["reviewer"] for r in rows}),
        "criteria": criteria,
        "preference": {"n": n, **shares, "alpha": _alpha_preference(rows)},
    }


def mean_interval(values: list[float]) -> dict[str, Any]:
    """Mean with a two-sided 95 % t interval (None bounds below two values)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "low": None, "high": None}
    mean = sum(values) / n
    if n < 2:
        return {"n": 1, "mean": mean, "low": None, "high": None}
    from scipy.stats import t

    half = float(t.ppf(0.975, n - 1)) * standard_deviation(values) / math.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half}


def wilson(k: int, n: int) -> dict[str, Any]:
    if n == 0:
        return {"share": None, "low": None, "high": None, "count": 0}
    p = k / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return {"share": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half), "count": k}


def standard_deviation(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _alpha_matrix(rows: list[dict[str, Any]], units_of) -> tuple[list[list[float]], int] | None:
    """Reviewers x units over the pairs judged by two or more reviewers (nan where one did not)."""
    by_item: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_item[r["item"]].append(r)
    shared = {item: rs for item, rs in by_item.items() if len({r["reviewer"] for r in rs}) >= 2}
    if not shared:
        return None
    reviewers = sorted({r["reviewer"] for rs in shared.values() for r in rs})
    units: list[tuple[str, str]] = []
    cells: dict[tuple[str, tuple[str, str]], float] = {}
    for item, rs in sorted(shared.items()):
        for r in rs:
            for key, value in units_of(r):
                if (item, key) not in units:
                    units.append((item, key))
                cells[(r["reviewer"], (item, key))] = value
    matrix = [[cells.get((rev, u), math.nan) for u in units] for rev in reviewers]
    return matrix, len(shared)


def _alpha(
    matrix_and_n, level: Literal["nominal", "ordinal", "interval", "ratio"], domain=None
) -> dict[str, Any] | None:
    if matrix_and_n is None:
        return None
    matrix, n_items = matrix_and_n
    import krippendorff
    import numpy as np

    data = np.array(matrix, dtype=float)
    observed = {v for v in data.flatten().tolist() if not math.isnan(v)}
    if len(observed) < 2:  # everyone gave the same value everywhere: alpha is undefined (0/0)
        return {"alpha": None, "pairs": n_items, "note": "every judgment identical: alpha undefined"}
    try:
        value = float(krippendorff.alpha(reliability_data=data, level_of_measurement=level, value_domain=domain))
    except (ValueError, ZeroDivisionError):
        return {"alpha": None, "pairs": n_items, "note": "not enough variation"}
    return {"alpha": None if math.isnan(value) else value, "pairs": n_items}


def _alpha_scores(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return _alpha(
        _alpha_matrix(rows, lambda r: [("local", r["local"][name]), ("upstream", r["upstream"][name])]),
        "ordinal",
        list(range(SCALE[0], SCALE[1] + 1)),
    )


def _alpha_preference(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    codes = {"upstream": 0.0, "tie": 1.0, "local": 2.0}
    return _alpha(_alpha_matrix(rows, lambda r: [("preference", codes[r["preferred"]])]), "nominal", [0.0, 1.0, 2.0])


def format_interval(m: dict[str, Any], signed: bool = False) -> str:
    if m["mean"] is None:
        return "—"
    f = "+.2f" if signed else ".2f"
    if m["low"] is None:
        return f"{m['mean']:{f}} (n={m['n']})"
    return f"{m['mean']:{f}} [{m['low']:{f}}, {m['high']:{f}}] (n={m['n']})"


def format_share(s: dict[str, Any]) -> str:
    return "—" if s["share"] is None else f"{s['share']:.0%} [{s['low']:.0%}, {s['high']:.0%}]"


def format_alpha(a: dict[str, Any] | None) -> str:
    if a is None:
        return "— (no pair judged by two reviewers)"
    if a["alpha"] is None:
        return f"— ({a.get('note', 'undefined')}, {a['pairs']} pairs)"
    return f"α {a['alpha']:.2f} over {a['pairs']} shared pairs"
