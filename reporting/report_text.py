"""A report in words: the one-line summaries the terminal panel and the HTML page share, and
`render_terminal`, which prints the panels with rich."""

from __future__ import annotations

import json
from collections.abc import Sequence

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from understudy.reporting.report_model import CostSummary, DrawsSummary, LatencySummary, PolicySummary, SiteReport


def partial_line(report: SiteReport) -> str:
    p = report.partial
    if p is None:
        return "-"
    if p.serving:
        return (
            f"serving local answers at confidence >= {p.threshold:.3f}; the rest upstream; local share "
            f"{format_share(report.local_share)} of all calls"
        )
    if p.threshold is None:
        return p.note
    reference = "1 (no paired self-agreement)" if p.reference is None else str(p.reference)
    return (
        f"testing confidence >= {p.threshold:.3f} ({format_share(p.share)} of fresh samples): agreement "
        f"{p.agreement} vs teacher on the same calls {reference}; validity {p.validity}"
    )


def draws_line(d: DrawsSummary) -> str:
    """Checked sampling in one line: mean draws per served, refused and shadowed local answer."""
    parts = []
    for label, n, mean in (
        ("served", d.served, d.served_mean_tries),
        ("refused", d.fallbacks, d.fallback_mean_tries),
        ("shadow", d.shadow, d.shadow_mean_tries),
    ):
        if n:
            parts.append(f"{label} {n} x {mean:.2f}")
    if d.shadow and d.shadow_redrawn is not None:
        parts.append(f"redrawn {format_share(d.shadow_redrawn)} of shadow answers")
    return "draws per local answer: " + ", ".join(parts) if parts else "no local answers drawn"


def format_ms(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


def format_usd(usd: float | None) -> str:
    if usd is None:
        return "—"
    # Per-call costs are fractions of a cent: keep four decimals until the sums grow.
    return f"${usd:,.2f}" if abs(usd) >= 100 else f"${usd:.4f}"


def format_share(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.1f}%"


def version_label(report: SiteReport) -> str:
    if report.reported_version is None:
        return "none trained"
    label = f"v{report.reported_version}"
    if report.active_version is None:
        label += " (latest; none active)"
    return label


def latency_line(latency: LatencySummary) -> str:
    parts = [
        f"upstream p50 {format_ms(latency.upstream.p50)} / p95 {format_ms(latency.upstream.p95)}",
        f"local p50 {format_ms(latency.local.p50)} / p95 {format_ms(latency.local.p95)}",
    ]
    if latency.shadow_local.n:
        parts.append(
            f"shadow local p50 {format_ms(latency.shadow_local.p50)} / p95 {format_ms(latency.shadow_local.p95)}"
        )
    return " · ".join(parts)


def cost_line(cost: CostSummary) -> str:
    line = f"spent {format_usd(cost.upstream_spent_usd)} · saved {format_usd(cost.saved_usd)}"
    if cost.mean_upstream_cost_usd is not None and cost.local_calls:
        line += f" ({cost.local_calls} local calls × {format_usd(cost.mean_upstream_cost_usd)})"
    return line


def samples_line(report: SiteReport) -> str:
    if report.agreement is None:
        return "0"
    line = str(report.agreement.samples)
    if report.agreement.incomparable:
        line += f" (+{report.agreement.incomparable} incomparable)"
    return line


def agreement_line(report: SiteReport) -> str:
    if report.agreement is None or not report.agreement.samples:
        return "no shadow samples yet"
    return report.agreement.format()


def teacher_line(report: SiteReport) -> str:
    if report.teacher is None:
        return "no self-agreement samples yet (the bar is 1)"
    return f"self-agreement {report.teacher}"


def judgement_line(report: SiteReport) -> str:
    j = report.judgement
    if j is None:
        return "nothing to judge (no active version in shadow or local)"
    reference = "1 (no samples)" if j.reference is None else str(j.reference)
    paired = ""
    if j.paired is not None:
        paired = f"; same-call agreement local - teacher {j.paired if j.paired.n else 'no pairs yet'}"
    return (
        f"{j.phase}: agreement {j.agreement} vs teacher {reference}, bar {j.bar:.2f}{paired}; "
        f"validity local - teacher {j.validity}; margin {j.margin:.2f}"
    )


def cascade_line(report: SiteReport) -> str:
    c = report.cascade
    if c is None or not c.samples:
        return "no calibration samples yet"
    if c.threshold is None:
        return f"no threshold (all {c.samples} calibration answers are served locally)"
    return (
        f"threshold {c.threshold:.3f}: local share {format_share(c.local_share_with)} (without "
        f"{format_share(c.local_share_without)}), agreement {c.agreement_with:.2f} (without {c.agreement_without:.2f})"
    )


def policy_line(policy: PolicySummary) -> str:
    overrides = json.dumps(policy.overrides, sort_keys=True) if policy.overrides else "none (global settings only)"
    return (
        f"promote when non-inferior to the teacher within {policy.margin:.2f} (alpha {policy.alpha:g}, "
        f"{policy.min_samples} samples at least; undecided after {policy.max_shadow_samples}: "
        f"inconclusive); demote on the last {policy.window} drift samples; "
        f"shadow rate {policy.shadow_sample_rate:g}, drift rate {policy.drift_sample_rate:g}, "
        f"self-agreement rate {policy.self_agreement_rate:g}; cascade {'on' if policy.cascade else 'off'}; "
        f"site overrides: {overrides}"
    )


# ---- terminal ------------------------------------------------------------------------------

_STATE_STYLE = {"learning": "yellow", "shadow": "cyan", "local": "green", "partial": "blue"}


def render_terminal(reports: Sequence[SiteReport], console: Console) -> None:
    """One panel per site. Site names and reasons go in as `Text`, never markup: a name such
    as `[bold]x` must print as typed."""
    if not reports:
        console.print("no sites recorded yet")
        return
    for report in reports:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        state = Text(report.state, style=_STATE_STYLE.get(report.state, ""))
        if report.pinned:
            state.append(f" (pinned: {report.pinned})", style="magenta")
        grid.add_row("state", state)
        versions = ", ".join(f"v{v.version} {v.status}" for v in report.versions)
        grid.add_row("version", Text(version_label(report) + (f"  [{versions}]" if versions else "")))
        grid.add_row("shadow samples", Text(samples_line(report)))
        grid.add_row("agreement", Text(agreement_line(report)))
        grid.add_row("teacher", Text(teacher_line(report)))
        grid.add_row("judgement", Text(judgement_line(report)))
        grid.add_row("cascade", Text(cascade_line(report)))
        grid.add_row("partial", Text(partial_line(report)))
        grid.add_row(
            "local share", Text(f"{format_share(report.local_share)} ({report.local_calls} of {report.calls} calls)")
        )
        grid.add_row("latency", Text(latency_line(report.latency)))
        grid.add_row("cost", Text(cost_line(report.cost)))
        grid.add_row("fallbacks", Text(str(report.fallbacks)))
        grid.add_row("draws", Text(draws_line(report.draws)))
        grid.add_row(
            "extra calls", Text(", ".join(f"{k} {v}" for k, v in sorted(report.extra_calls.items())) or "none")
        )
        grid.add_row("policy", Text(policy_line(report.policy)))
        grid.add_row("why", Text(report.why))
        title = Text(report.name, style="bold")
        title.append(f" ({report.id})", style="dim")
        console.print(Panel(grid, title=title, title_align="left", expand=True))
