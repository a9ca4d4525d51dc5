"""The HTML report's human-review and eval sections, per site (`reporting.report_html` places them).

Same rules as the rest of the page: static markup, every value escaped once where it enters, no
scripts. A site without review pairs or eval runs gets no section (the shadow report stands alone).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from understudy.db import Cursor
from understudy.reporting.review_statistics import format_alpha, format_interval, format_share
from understudy.reporting.reviews import results
from understudy.routing.evaluation import latest_run


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def site_sections(cur: Cursor, site_ids: Sequence[str]) -> dict[str, str]:
    out = {}
    for site_id in site_ids:
        parts = []
        has_items = cur.execute("SELECT count(*) FROM review_items WHERE site_id = ?", [site_id]).fetchone()[0]
        if has_items:
            parts.append(review_section(results(cur, site_id)))
        run = latest_run(cur, site_id)
        if run is not None:
            parts.append(eval_section(run))
        if parts:
            out[site_id] = "".join(parts)
    return out


def review_section(r: dict[str, Any]) -> str:
    rows = "".join(
        f'<tr><td>{_e(c["label"])}</td><td class="num">{c["n"]}</td><td>{_e(format_interval(c["upstream"]))}</td>'
        f"<td>{_e(format_interval(c['local']))}</td><td>{_e(format_interval(c['difference'], signed=True))}</td>"
        f"<td>{_e(format_alpha(c['alpha']))}</td></tr>"
        for c in r["criteria"].values()
    )
    p = r["preference"]
    reviewers = ", ".join(r["reviewers"]) or "none yet"
    return (
        '<div class="review" data-section="review">'
        f'<h3>Human review (blind)</h3><p class="meta">{r["judgments"]} judgments of {r["pairs"]} pairs '
        f"({r['shared_pairs']} shared) by {_e(reviewers)}; means with 95 % t intervals, preferences with Wilson intervals, "
        "agreement is Krippendorff's alpha on pairs judged by two or more reviewers</p>"
        '<table class="review"><thead><tr><th>criterion</th><th>judgments</th><th>upstream</th><th>local</th>'
        "<th>local − upstream</th><th>alpha</th></tr></thead><tbody>" + rows + "</tbody></table>"
        f"<p>preference: local {_e(format_share(p['local']))} · upstream {_e(format_share(p['upstream']))} · tie {_e(format_share(p['tie']))}"
        f" · agreement {_e(format_alpha(p['alpha']))}</p></div>"
    )


def eval_section(run: dict[str, Any]) -> str:
    def pct(x):
        return "—" if x is None else f"{x:.0%}"

    rows = []
    for row in run["rows"]:
        checks = ", ".join(f"{k} {pct(v)}" for k, v in row["checks"].items()) or "—"
        agreement = "—" if row["agreement"] is None else f"{row['agreement']:.2f} (n={row['agreement_n']})"
        p50 = "—" if row["latency_p50_ms"] is None else f"{row['latency_p50_ms']:.0f} ms"
        cost = "—" if row["cost_per_call_usd"] is None else f"${row['cost_per_call_usd']:.5f}"
        rows.append(
            f'<tr data-row="{_e(row["row"])}"><td>{_e(row["row"])}</td><td class="num">{_e(pct(row["parse_valid_rate"]))}</td>'
            f'<td class="num">{_e(pct(row["validator_pass_rate"]))}</td><td>{_e(checks)}</td>'
            f'<td class="num">{_e(agreement)}</td><td class="num">{_e(p50)}</td><td class="num">{_e(cost)}</td></tr>'
        )
    return (
        '<div class="eval" data-section="eval">'
        f'<h3>Held-out evaluation</h3><p class="meta">{run["heldout"]} held-out requests, run {_e(run["ts"][:19])} UTC, '
        f"validator {_e(run['validator'] or 'none')}</p>"
        '<table class="eval"><thead><tr><th>answers</th><th>parse-valid</th><th>validator</th><th>checks</th>'
        "<th>agreement</th><th>p50 latency</th><th>cost / call</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )
