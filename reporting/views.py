"""The shadow-mode report in its three forms (terminal text, HTML page, JSON), rendered by
whichever process owns the store: the proxy (admin API and `/report`) or the CLI."""

from __future__ import annotations

import io
import json

from rich.console import Console

from understudy.pricing import PriceTable
from understudy.reporting.report import build_report
from understudy.reporting.report_html import render_html
from understudy.reporting.report_text import render_terminal
from understudy.routing.policy import PromotionPolicy
from understudy.settings import Settings
from understudy.store import Store

FORMATS = ("text", "html", "json")


def render_report(
    store: Store, settings: Settings, site: str | None, fmt: str, *, color: bool = False, width: int = 120
) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"report format must be one of {', '.join(FORMATS)}")
    site_id = store.resolve_site(site).id if site is not None else None  # any of its names; misses list candidates
    reports = build_report(
        store.cursor(),
        site_id,
        prices=PriceTable.load(settings.prices_file),
        policy=PromotionPolicy.from_dict(settings.routing_policy),
    )
    if fmt == "html":
        from understudy.reporting.report_sections import site_sections

        return render_html(reports, sections=site_sections(store.cursor(), [r.id for r in reports]))
    if fmt == "json":
        return json.dumps([r.to_dict() for r in reports], indent=2, default=str) + "\n"
    buffer = io.StringIO()
    render_terminal(
        reports, Console(file=buffer, force_terminal=color, width=width, color_system="auto" if color else None)
    )
    return buffer.getvalue()
