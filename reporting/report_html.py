"""The shadow-mode report as one self-contained HTML page (`understudy report --html`, `/report`).

Design
------
- One file, nothing fetched: no scripts, no CDN, no web fonts (system font stack). The page
  must open from a laptop's disk, a CI artifact or an air-gapped box exactly as it was written.
- Charts are inline SVG drawn here in Python from `reporting.report_model.SiteReport` time series: a
  small line-chart routine with axes, ticks, gridlines, a legend, optional shaded bands (Wilson
  intervals, stacked traffic shares) and horizontal rules (promotion thresholds). A charting
  library would mean JavaScript or a large dependency for four line charts.
- Each chart is `<svg class="plot" data-plot="agreement|traffic|latency|cost" data-site="ID">`
  holding real `<path>` elements, so tests (and people) can find and check them. With nothing
  to draw, a `<div class="plot-empty" ...>` note with the same data attributes takes its place
  instead of an empty or broken chart.
- All text that came from users or the database (site names, ids, reasons, metrics) goes through
  `html.escape` once, where it enters the markup; numbers are formatted by this module.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from understudy.reporting.report_model import SiteReport
from understudy.reporting.report_text import (
    agreement_line,
    cascade_line,
    cost_line,
    format_ms,
    format_share,
    format_usd,
    judgement_line,
    latency_line,
    partial_line,
    policy_line,
    samples_line,
    teacher_line,
    version_label,
)

# Chart geometry in SVG user units; the SVG scales to its container through its viewBox.
WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 78, 36, 40, 48
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
# Lines with at most this many points also get dot markers (sparse data reads better with them).
MARKER_LIMIT = 40

UPSTREAM_COLOR = "#3b6ea8"
LOCAL_COLOR = "#2f9e44"
SHADOW_COLOR = "#9c36b5"
PROMOTE_COLOR = "#2b8a3e"
DEMOTE_COLOR = "#e8590c"
# Versions: distinct hues that avoid the threshold rules' green and orange.
VERSION_COLORS = ("#1c7ed6", "#c92a2a", "#7048e8", "#862e9c", "#0b7285", "#5c940d", "#d6336c", "#495057")

_TIME_STEPS = (
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
    2 * 86400,
    7 * 86400,
    14 * 86400,
    30 * 86400,
)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


# ---- a small SVG line chart ----------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    label: str
    color: str
    points: Sequence[tuple[float, float | None]]  # (x, y); a None y breaks the line
    dash: str | None = None  # SVG stroke-dasharray


@dataclass(frozen=True)
class Band:
    label: str | None  # None: not in the legend (it shades a line that is)
    color: str
    points: Sequence[tuple[float, float, float]]  # (x, low, high)
    opacity: float = 0.18


@dataclass(frozen=True)
class Rule:
    y: float
    label: str
    color: str


@dataclass
class Chart:
    kind: str
    site_id: str
    title: str
    y_label: str
    y_format: Callable[[float], str]
    lines: list[Line] = field(default_factory=list)
    bands: list[Band] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    y_range: tuple[float, float] | None = None  # None: 0 up to a round number above the data
    min_x_span: float = 60.0  # a single bucket still gets a visible x range

    def render(self) -> str:
        xs = [x for line in self.lines for x, _ in line.points] + [x for band in self.bands for x, _, _ in band.points]
        x0, x1 = min(xs), max(xs)
        if x1 - x0 < self.min_x_span:
            middle = (x0 + x1) / 2
            x0, x1 = middle - self.min_x_span / 2, middle + self.min_x_span / 2
        if self.y_range is not None:
            y0, y1 = self.y_range
            y_step = _nice_step(y1 - y0)
        else:
            ys = [y for line in self.lines for _, y in line.points if y is not None]
            ys += [h for band in self.bands for _, _, h in band.points]
            ys += [rule.y for rule in self.rules]
            top = max(ys, default=0.0)
            y0 = 0.0
            y_step = _nice_step(top if top > 0 else 1.0)
            y1 = max(y_step, math.ceil(top / y_step - 1e-9) * y_step)

        def sx(x: float) -> float:
            return LEFT + (x - x0) / (x1 - x0) * PLOT_W

        def sy(y: float) -> float:
            y = min(max(y, y0), y1)  # clamp: a stray value must not draw over the axes
            return TOP + PLOT_H - (y - y0) / (y1 - y0) * PLOT_H

        out = [
            f'<svg class="plot" data-plot="{_e(self.kind)}" data-site="{_e(self.site_id)}" '
            f'xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
            f'role="img" aria-label="{_e(self.title)}">',
            f"<title>{_e(self.title)}</title>",
            f'<rect x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" fill="#ffffff" stroke="none"/>',
        ]
        # Gridlines and y tick labels.
        # Ticks as y0 + i·step, not repeated addition, so float error cannot drop the last one.
        for i in range(int(round((y1 - y0) / y_step)) + 1):
            tick = y0 + i * y_step
            y = sy(tick)
            out.append(
                f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + PLOT_W}" y2="{y:.1f}" stroke="#e9ecef"/>'
            )
            out.append(
                f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_e(self.y_format(tick))}</text>'
            )
        # X ticks: round UTC times.
        for t, label in _time_ticks(x0, x1):
            x = sx(t)
            out.append(
                f'<line x1="{x:.1f}" y1="{TOP + PLOT_H}" x2="{x:.1f}" y2="{TOP + PLOT_H + 5}" stroke="#495057"/>'
            )
            out.append(
                f'<text x="{x:.1f}" y="{TOP + PLOT_H + 18}" text-anchor="middle" class="tick">{_e(label)}</text>'
            )
        # Bands under the rules, rules under the lines; rule labels carry a white halo so a line
        # passing behind them does not make them unreadable.
        for band in self.bands:
            if not band.points:
                continue
            upper = [(sx(x), sy(h)) for x, _, h in band.points]
            lower = [(sx(x), sy(lo)) for x, lo, _ in reversed(band.points)]
            if len(upper) == 1:  # one bucket: give the area a sliver of width so it shows
                (ux, uy), (lx, ly) = upper[0], lower[0]
                upper, lower = [(ux - 3, uy), (ux + 3, uy)], [(lx + 3, ly), (lx - 3, ly)]
            d = "M" + " L".join(f"{x:.1f} {y:.1f}" for x, y in upper + lower) + " Z"
            out.append(f'<path class="band" d="{d}" fill="{band.color}" fill-opacity="{band.opacity}" stroke="none"/>')
        for rule in self.rules:
            if not y0 <= rule.y <= y1:
                continue
            y = sy(rule.y)
            out.append(
                f'<line class="rule" x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + PLOT_W}" y2="{y:.1f}" '
                f'stroke="{rule.color}" stroke-width="1.5" stroke-dasharray="6 4"/>'
            )
            out.append(
                f'<text x="{LEFT + PLOT_W - 4}" y="{y - 5:.1f}" text-anchor="end" class="rule-label" '
                f'fill="{rule.color}" stroke="#ffffff" stroke-width="3" paint-order="stroke">{_e(rule.label)}</text>'
            )
        for line in self.lines:
            segments = _segments([(sx(x), sy(y)) if y is not None else None for x, y in line.points])
            dash = f' stroke-dasharray="{line.dash}"' if line.dash else ""
            d = " ".join("M" + " L".join(f"{x:.1f} {y:.1f}" for x, y in seg) for seg in segments if len(seg) > 1)
            if d:
                out.append(
                    f'<path class="line" data-series="{_e(line.label)}" d="{d}" fill="none" stroke="{line.color}" '
                    f'stroke-width="2" stroke-linejoin="round" stroke-linecap="round"{dash}/>'
                )
            sparse = sum(len(seg) for seg in segments) <= MARKER_LIMIT
            for seg in segments:
                if sparse or len(seg) == 1:  # a lone point has no line to show it
                    out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{line.color}"/>' for x, y in seg)
        # Axes and titles last, so data never hides them.
        out.append(
            f'<path class="axis" d="M{LEFT} {TOP} L{LEFT} {TOP + PLOT_H} L{LEFT + PLOT_W} {TOP + PLOT_H}" '
            f'fill="none" stroke="#495057" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{LEFT + PLOT_W / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle" class="axis-label">time (UTC)</text>'
        )
        out.append(
            f'<text transform="translate(14 {TOP + PLOT_H / 2:.1f}) rotate(-90)" text-anchor="middle" '
            f'class="axis-label">{_e(self.y_label)}</text>'
        )
        out.append(self._legend())
        out.append("</svg>")
        return "\n".join(out)

    def _legend(self) -> str:
        items = [(b.label, b.color, None) for b in self.bands if b.label] + [
            (line.label, line.color, line.dash) for line in self.lines
        ]
        parts, x = [], float(LEFT)
        for label, color, dash in items:
            # A solid swatch even for dashed lines: the colour is what identifies the series.
            parts.append(f'<rect class="swatch" x="{x:.1f}" y="12" width="14" height="14" fill="{color}"/>')
            style = ' font-style="italic"' if dash else ""
            parts.append(f'<text x="{x + 19:.1f}" y="24" class="legend"{style}>{_e(label)}</text>')
            x += 30 + 7 * len(label)
        return '<g class="legend">' + "".join(parts) + "</g>"


def _segments(points: Sequence[tuple[float, float] | None]) -> list[list[tuple[float, float]]]:
    segments: list[list[tuple[float, float]]] = [[]]
    for point in points:
        if point is None:
            if segments[-1]:
                segments.append([])
        else:
            segments[-1].append(point)
    return [seg for seg in segments if seg]


def _nice_step(span: float, target: int = 5) -> float:
    """A 1/2/2.5/5 × 10^k step giving about `target` ticks over `span`."""
    raw = span / target
    magnitude = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 2.5, 5, 10):
        if multiple * magnitude >= raw - 1e-12:
            return multiple * magnitude
    return 10 * magnitude


def _time_ticks(x0: float, x1: float, target: int = 6) -> list[tuple[float, str]]:
    span = x1 - x0
    step = next((s for s in _TIME_STEPS if span / s <= target), _TIME_STEPS[-1])
    if step >= 86400:
        fmt = "%b %d"
    elif span > 86400:
        fmt = "%m-%d %H:%M"
    else:
        fmt = "%H:%M"
    first = math.ceil(x0 / step) * step
    ticks: list[tuple[float, str]] = []
    t = first
    while t <= x1:
        ticks.append((t, datetime.fromtimestamp(t, UTC).strftime(fmt)))
        t += step
    return ticks


def _empty(kind: str, site_id: str, message: str) -> str:
    return f'<div class="plot-empty" data-plot="{_e(kind)}" data-site="{_e(site_id)}">{_e(message)}</div>'


# ---- the four plots ------------------------------------------------------------------------


def agreement_plot(report: SiteReport) -> str:
    series = [s for s in report.series.agreement if s.points]
    if not series:
        return _empty("agreement", report.id, "no shadow samples yet")
    chart = Chart(
        "agreement",
        report.id,
        f"Agreement over time per version, {report.name}",
        "agreement (running mean, confidence sequence)",
        lambda v: f"{v:.1f}",
        y_range=(0.0, 1.0),
    )
    for index, s in enumerate(series):
        color = VERSION_COLORS[index % len(VERSION_COLORS)]
        chart.bands.append(Band(None, color, [(p.t, p.low, p.high) for p in s.points], opacity=0.14))
        chart.lines.append(Line(f"v{s.version}", color, [(p.t, p.mean) for p in s.points]))
    if report.teacher is not None and report.teacher.mean is not None:
        chart.rules.append(Rule(report.teacher.mean, f"teacher {report.teacher.mean:.2f}", PROMOTE_COLOR))
    bar = report.judgement.bar if report.judgement is not None else None
    if bar is not None:
        chart.rules.append(Rule(bar, f"bar {bar:.2f} (teacher - margin)", DEMOTE_COLOR))
    return chart.render()


def traffic_plot(report: SiteReport) -> str:
    points = report.series.traffic
    if not points:
        return _empty("traffic", report.id, "no calls recorded yet")
    chart = Chart(
        "traffic",
        report.id,
        f"Traffic share over time, {report.name}",
        "share of calls",
        lambda v: f"{v * 100:.0f}%",
        y_range=(0.0, 1.0),
        min_x_span=report.series.bucket_s,
    )
    # Stacked: local from the bottom, upstream above it up to 100%.
    chart.bands.append(Band("upstream", UPSTREAM_COLOR, [(p.t, p.local_share, 1.0) for p in points], opacity=0.25))
    chart.bands.append(Band("local", LOCAL_COLOR, [(p.t, 0.0, p.local_share) for p in points], opacity=0.35))
    chart.lines.append(Line("local share", LOCAL_COLOR, [(p.t, p.local_share) for p in points]))
    return chart.render()


def latency_plot(report: SiteReport) -> str:
    points = report.series.latency
    candidates = [
        Line("upstream p50", UPSTREAM_COLOR, [(p.t, p.upstream_p50) for p in points]),
        Line("upstream p95", UPSTREAM_COLOR, [(p.t, p.upstream_p95) for p in points], dash="5 4"),
        Line("local p50", LOCAL_COLOR, [(p.t, p.local_p50) for p in points]),
        Line("local p95", LOCAL_COLOR, [(p.t, p.local_p95) for p in points], dash="5 4"),
        Line("shadow local p50", SHADOW_COLOR, [(p.t, p.shadow_local_p50) for p in points], dash="2 3"),
    ]
    lines = [line for line in candidates if any(y is not None for _, y in line.points)]
    if not lines:
        return _empty("latency", report.id, "no successful calls recorded yet")
    chart = Chart(
        "latency",
        report.id,
        f"Latency over time, {report.name}",
        "latency",
        _axis_ms,
        lines=lines,
        min_x_span=report.series.bucket_s,
    )
    return chart.render()


def cost_plot(report: SiteReport) -> str:
    points = report.series.cost
    if not points:
        return _empty("cost", report.id, "no calls recorded yet")
    chart = Chart(
        "cost",
        report.id,
        f"Cumulative cost, {report.name}",
        "cumulative USD",
        _axis_usd,
        min_x_span=report.series.bucket_s,
        lines=[
            Line("upstream spent", UPSTREAM_COLOR, [(p.t, p.spent_usd) for p in points]),
            Line("saved by local", LOCAL_COLOR, [(p.t, p.saved_usd) for p in points]),
        ],
    )
    return chart.render()


def _axis_ms(value: float) -> str:
    return f"{value / 1000:g} s" if value >= 1000 else f"{value:g} ms"


def _axis_usd(value: float) -> str:
    return f"${value:g}"


# ---- the page ------------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0 auto; max-width: 1400px; padding: 24px; color: #212529; background: #f8f9fa; }
h1 { margin: 0 0 4px; font-size: 1.6em; }
h2 { margin: 0 0 8px; font-size: 1.3em; }
h3 { margin: 18px 0 6px; font-size: 1.05em; }
.meta, .id { color: #6c757d; font-size: 0.9em; }
table { border-collapse: collapse; background: #fff; margin: 8px 0; font-size: 0.92em; }
th, td { border: 1px solid #dee2e6; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f1f3f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
section.site { background: #fff; border: 1px solid #dee2e6; border-radius: 8px; padding: 16px 20px; margin: 20px 0; }
.state { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 0.8em; color: #fff;
         background: #868e96; vertical-align: middle; }
.state-learning { background: #e67700; } .state-shadow { background: #1971c2; } .state-local { background: #2b8a3e; }
.why { font-style: italic; margin: 4px 0 10px; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 16px; }
figure { margin: 0; border: 1px solid #e9ecef; border-radius: 6px; padding: 8px; background: #fff; }
figcaption { font-weight: 600; margin-bottom: 4px; }
svg.plot { width: 100%; height: auto; display: block; }
svg.plot text { font-size: 12px; fill: #343a40; }
svg.plot text.legend { font-size: 12px; }
svg.plot text.rule-label { font-size: 11px; font-weight: 600; }
.plot-empty { display: flex; align-items: center; justify-content: center; min-height: 160px; color: #868e96;
              background: #f8f9fa; border: 1px dashed #ced4da; border-radius: 6px; }
code { font-size: 0.85em; }
"""


def render_html(
    reports: Sequence[SiteReport],
    *,
    generated_at: datetime | None = None,
    title: str = "Understudy shadow-mode report",
    sections: Mapping[str, str] | None = None,
) -> str:
    """The whole report as one self-contained HTML document; `sections` (site id -> HTML, already
    escaped: human review and eval results, `reporting.report_sections`) close each site's section."""
    generated = (generated_at or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    body = [
        f"<header><h1>{_e(title)}</h1>",
        f'<p class="meta">generated {_e(generated)} · {len(reports)} site{"s" if len(reports) != 1 else ""}</p></header>',
    ]
    if not reports:
        body.append('<p class="plot-empty">no sites recorded yet</p>')
    else:
        body.append(_overview(reports))
        body.extend(
            _site_section(index, report, (sections or {}).get(report.id, "")) for index, report in enumerate(reports)
        )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # No network, ever: the page must not be able to load anything even if text slipped through.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _overview(reports: Sequence[SiteReport]) -> str:
    rows = []
    for index, r in enumerate(reports):
        rows.append(
            "<tr>"
            f'<td><a href="#site-{index}">{_e(r.name)}</a> <span class="id">{_e(r.id)}</span></td>'
            f'<td><span class="state state-{_e(r.state)}">{_e(r.state)}</span></td>'
            f"<td>{_e(version_label(r))}</td>"
            f'<td class="num">{_e(samples_line(r))}</td>'
            f"<td>{_e(r.agreement.format() if r.agreement else '—')}</td>"
            f'<td class="num">{_e(format_share(r.local_share))}</td>'
            f'<td class="num">{_e(format_ms(r.latency.upstream.p50))} / {_e(format_ms(r.latency.local.p50))}</td>'
            f'<td class="num">{_e(format_usd(r.cost.upstream_spent_usd))}</td>'
            f'<td class="num">{_e(format_usd(r.cost.saved_usd))}</td>'
            f'<td class="num">{r.fallbacks}</td>'
            "</tr>"
        )
    return (
        '<table class="overview"><thead><tr><th>site</th><th>state</th><th>version</th><th>shadow samples</th>'
        "<th>agreement [95% CI]</th><th>local share</th><th>p50 upstream / local</th><th>spent</th><th>saved</th>"
        "<th>fallbacks</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _site_section(index: int, r: SiteReport, extra: str = "") -> str:
    state = _e(r.state) + (f" · pinned {_e(r.pinned)}" if r.pinned else "")
    summary_rows = [
        ("state", state),
        ("version", _e(version_label(r))),
        ("shadow samples", _e(samples_line(r))),
        ("agreement", _e(agreement_line(r))),
        ("local share", _e(f"{format_share(r.local_share)} ({r.local_calls} of {r.calls} calls)")),
        ("latency", _e(latency_line(r.latency))),
        ("cost", _e(cost_line(r.cost))),
        ("teacher", _e(teacher_line(r))),
        ("judgement", _e(judgement_line(r))),
        ("cascade", _e(cascade_line(r))),
        ("partial", _e(partial_line(r))),
        ("fallbacks", str(r.fallbacks)),
        ("extra calls", _e(", ".join(f"{k} {v}" for k, v in sorted(r.extra_calls.items())) or "none")),
        ("policy", _e(policy_line(r.policy))),
        ("assessment", _e(r.assessment)),
    ]
    summary = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in summary_rows)
    plots = [
        ("Agreement over time per version", agreement_plot(r)),
        ("Traffic share", traffic_plot(r)),
        ("Latency", latency_plot(r)),
        ("Cumulative cost: spent vs saved", cost_plot(r)),
    ]
    figures = "".join(f"<figure><figcaption>{_e(caption)}</figcaption>{svg}</figure>" for caption, svg in plots)
    return (
        f'<section class="site" id="site-{index}" data-site="{_e(r.id)}">'
        f'<h2>{_e(r.name)} <span class="id">{_e(r.id)}</span> <span class="state state-{_e(r.state)}">{_e(r.state)}</span></h2>'
        f'<p class="why">why: {_e(r.why)}</p>'
        f'<table class="summary">{summary}</table>'
        f'<div class="plots">{figures}</div>' + _versions_table(r) + _audit_table(r) + extra + "</section>"
    )


def _versions_table(r: SiteReport) -> str:
    if not r.versions:
        return '<h3>Versions</h3><p class="meta">no trained versions yet</p>'
    rows = []
    for v in r.versions:
        metrics = json.dumps(v.metrics, separators=(", ", ": "), default=str)
        if len(metrics) > 240:
            metrics = metrics[:237] + "…"
        valid = format_share(v.shadow.local_valid_rate)
        rows.append(
            "<tr>"
            f"<td>v{v.version}</td><td>{_e(v.status)}</td><td>{_e(v.base_model or '—')}</td><td>{_e(v.created_at)}</td>"
            f'<td class="num">{v.shadow.samples}</td><td>{_e(v.shadow.format())}</td><td class="num">{_e(valid)}</td>'
            f"<td><code>{_e(metrics)}</code></td><td>{_e(v.note or '')}</td>"
            "</tr>"
        )
    return (
        '<h3>Versions</h3><table class="versions"><thead><tr><th>version</th><th>status</th><th>base model</th>'
        "<th>created</th><th>shadow samples</th><th>agreement [95% CI]</th><th>local valid</th><th>metrics</th>"
        "<th>note</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _audit_table(r: SiteReport) -> str:
    if not r.audit:
        return '<h3>Recent decisions</h3><p class="meta">no audit entries yet</p>'
    rows = "".join(
        f"<tr><td>{_e(a.ts)}</td><td>{_e(a.action)}</td><td>{_e(a.actor)}</td><td>{_e(a.reason)}</td></tr>"
        for a in r.audit
    )
    return (
        '<h3>Recent decisions</h3><table class="audit"><thead><tr><th>time (UTC)</th><th>action</th><th>actor</th>'
        "<th>reason</th></tr></thead><tbody>" + rows + "</tbody></table>"
    )
