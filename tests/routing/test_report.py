"""Shadow-mode reports: the numbers from a real DuckDB store, the terminal text, and the HTML page
rendered by headless Chromium (Debian's `chromium`) with its plots checked in the DOM and on screen."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rich.console import Console

from tests.support.rows import call_row
from understudy.pricing import PriceTable
from understudy.reporting.report import build_report
from understudy.reporting.report_html import VERSION_COLORS, render_html
from understudy.reporting.report_text import render_terminal
from understudy.routing.policy import PromotionPolicy
from understudy.routing.sequential import confidence_sequence
from understudy.store import SiteNotFound, Store

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
A, B, C = "a1b2c3d4e5f6", "b0000000beef", "c0ffee000000"
EVIL_NAME = '<script>alert("x")</script> & [bold]co'

# Site A: local since v2; v1 was retired. Its numbers, from which the expectations derive.
V1_SCORES = [0.5, 0.7] * 15  # 30 comparable
V2_SCORES = [1.0, 1.0, 1.0, 0.75] * 10  # 40 comparable, plus 3 incomparable rows
UPSTREAM_LATENCIES = [500.0 + 10 * i for i in range(61)]  # successful upstream calls
LOCAL_LATENCIES = [50.0 + i for i in range(20)]
SHADOW_LOCAL_LATENCIES = [80.0 + i for i in range(40)]
COST_PER_CALL = 0.002
PROMOTE_REASON = "promoted: non-inferior to the teacher; validity local - teacher +0.00 [-0.09, +0.09] over 40"
DRIFT_SCORES = [1.0, 0.75] * 5  # drift checks since the site went local
TEACHER_SCORES = [1.0, 0.75, 1.0] * 10  # the upstream's self-agreement
ALPHA = PromotionPolicy().alpha


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, DuckDB's quantile_cont)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _call(
    call_id,
    site,
    ts,
    served_by,
    latency,
    *,
    status=200,
    error=None,
    cost=0.0,
    model="gpt-4o-mini",
    prompt_tokens=None,
    completion_tokens=None,
):
    return call_row(
        call_id,
        site,
        ts=ts,
        model=model,
        served_by=served_by,
        request="{}",
        response="{}",
        status=status,
        error=error,
        latency_ms=latency,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost,
        provider="openai" if served_by == "upstream" else "local",
        upstream_model=model,
    )


def _populate(store: Store) -> None:
    cur = store.cursor()
    sites = [
        (
            A,
            "classify_ticket",
            "local",
            2,
            '{"promotion": {"window": 30, "min_samples": 10}, "creative_paths": ["walls"]}',
            0,
        ),
        (B, EVIL_NAME, "learning", None, None, 1),
        (C, "empty_site", "shadow", 1, None, 2),
    ]
    for sid, name, state, active, policy, order in sites:
        cur.execute(
            "INSERT INTO sites (id, name, name_source, kind, state, active_version, policy, created_at) "
            "VALUES (?, ?, 'function', 'byllm', ?, ?, ?, ?)",
            [sid, name, state, active, policy, T0 - timedelta(days=1) + timedelta(minutes=order)],
        )
    cur.executemany(
        "INSERT INTO model_versions (site_id, version, status, base_model, metrics, note, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (A, 1, "retired", "gemma-3-270m", json.dumps({"eval_loss": 0.9}), None, T0),
            (
                A,
                2,
                "active",
                "gemma-3-270m",
                json.dumps({"eval_loss": 0.4, "exact": 0.8}),
                None,
                T0 + timedelta(hours=2),
            ),
            (C, 1, "ready", "gemma-3-270m", None, None, T0),
        ],
    )
    shadow = []
    for i, score in enumerate(V1_SCORES):  # hours 0-2
        shadow.append((f"s1-{i}", A, 1, T0 + timedelta(minutes=4 * i), score, "{}", True, True, 120.0, 900.0))
    for i, score in enumerate(V2_SCORES):  # hours 2-4
        shadow.append(
            (
                f"s2-{i:02d}",
                A,
                2,
                T0 + timedelta(hours=2, minutes=3 * i),
                score,
                "{}",
                True,
                score > 0,
                SHADOW_LOCAL_LATENCIES[i],
                900.0,
            )
        )
    for i in range(3):  # the upstream answer was unusable: recorded, not scored against
        shadow.append((f"s2-x{i}", A, 2, T0 + timedelta(hours=3, minutes=i), 0.0, "{}", False, True, None, None))
    cur.executemany(
        "INSERT INTO shadow_results (call_id, site_id, version, ts, score, components, comparable, local_valid, "
        "local_latency_ms, upstream_latency_ms, upstream_valid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, true)",
        shadow,
    )
    cur.executemany(
        "INSERT INTO shadow_results (call_id, site_id, version, ts, score, components, comparable, local_valid, "
        "upstream_valid, phase) VALUES (?, ?, 2, ?, ?, '{}', true, true, true, 'drift')",
        [(f"d{i}", A, T0 + timedelta(hours=4, minutes=10 + 5 * i), score) for i, score in enumerate(DRIFT_SCORES)],
    )
    cur.executemany(
        "INSERT INTO self_agreement (call_id, second_call_id, site_id, ts, score, components, comparable, first_valid, "
        "second_valid) VALUES (?, ?, ?, ?, ?, '{}', true, true, true)",
        [(f"u{i}", f"x{i}", A, T0 + timedelta(minutes=5 * i + 1), score) for i, score in enumerate(TEACHER_SCORES)],
    )
    cur.execute("UPDATE sites SET state_since = ? WHERE id = ?", [T0 + timedelta(hours=4), A])
    calls = []
    for i, latency in enumerate(UPSTREAM_LATENCIES):  # hours 0-5
        error = "local fallback: invalid JSON from local:a1b2c3d4e5f6@v2" if i in (10, 20) else None
        if i == 60:  # recorded before its model had a price: cost unknown, tokens known
            calls.append(
                _call(
                    f"u{i}",
                    A,
                    T0 + timedelta(minutes=5 * i),
                    "upstream",
                    latency,
                    cost=None,
                    prompt_tokens=1000,
                    completion_tokens=500,
                )
            )
        else:
            calls.append(
                _call(f"u{i}", A, T0 + timedelta(minutes=5 * i), "upstream", latency, error=error, cost=COST_PER_CALL)
            )
    calls.append(
        _call("u-fail", A, T0 + timedelta(hours=1), "upstream", 5.0, status=502, error="upstream: timeout", cost=None)
    )
    for i, latency in enumerate(LOCAL_LATENCIES):  # hours 4-6
        calls.append(_call(f"l{i}", A, T0 + timedelta(hours=4, minutes=6 * i), f"local:{A}@v2", latency))
    for i in range(5):
        calls.append(_call(f"b{i}", B, T0 + timedelta(minutes=10 * i), "upstream", 300.0, cost=0.001))
    store.write_batch([], calls)
    cur.executemany(
        "INSERT INTO audit (ts, site_id, action, detail, actor) VALUES (?, ?, ?, ?, ?)",
        [
            (
                T0 + timedelta(hours=2),
                A,
                "version",
                json.dumps({"version": 2, "reason": "new version: shadowing the upstream"}),
                "worker",
            ),
            (T0 + timedelta(hours=3), A, "state", json.dumps({"from": "learning", "to": "shadow"}), "policy"),
            (T0 + timedelta(hours=4), A, "promote", json.dumps({"version": 2, "reason": PROMOTE_REASON}), "policy"),
            # Bookkeeping since: a version registered, which explains nothing about routing.
            (
                T0 + timedelta(hours=5),
                A,
                "version",
                json.dumps({"version": 3, "status": "failed", "note": "OOM"}),
                "worker",
            ),
            (T0 + timedelta(hours=1), C, "pin", json.dumps({"target": "local@v1", "was": None}), "cli"),
        ],
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("report") / "understudy.duckdb")
    _populate(store)
    yield store
    store.close()


@pytest.fixture(scope="module")
def reports(store):
    return {r.id: r for r in build_report(store.cursor())}


# ---- numbers -------------------------------------------------------------------------------


def test_sites_in_creation_order(store):
    assert [r.id for r in build_report(store.cursor())] == [A, B, C]


def test_agreement_of_the_active_version(reports):
    a = reports[A]
    assert (a.state, a.active_version, a.reported_version) == ("local", 2, 2)
    # Every comparable sample of the version: shadow, then drift checks while local.
    scores = V2_SCORES + DRIFT_SCORES
    assert a.agreement.samples == 50 and a.agreement.incomparable == 3
    assert a.agreement.mean == pytest.approx(sum(scores) / 50)
    assert (a.agreement.low, a.agreement.high) == pytest.approx(confidence_sequence(scores, ALPHA / 2))
    assert a.agreement.format() == f"0.93 [{a.agreement.low:.2f}, {a.agreement.high:.2f}]"
    assert a.agreement.upstream_valid_rate == 1.0
    # The site's own overrides (under "promotion", as the router reads them) apply.
    assert a.policy.window == 30 and a.policy.min_samples == 10 and a.policy.margin == 0.1


def test_judgement_is_what_the_policy_weighs_now(reports):
    a = reports[A]
    # Local: the drift samples since the site went local (not the shadow samples before it).
    assert a.judgement.phase == "drift" and a.judgement.agreement.n == len(DRIFT_SCORES)
    assert a.judgement.agreement.mean == pytest.approx(sum(DRIFT_SCORES) / len(DRIFT_SCORES))
    assert a.teacher.n == len(TEACHER_SCORES) and a.teacher.mean == pytest.approx(sum(TEACHER_SCORES) / 30)
    assert (a.teacher.low, a.teacher.high) == pytest.approx(confidence_sequence(TEACHER_SCORES, ALPHA / 2))
    assert a.judgement.bar == pytest.approx(a.teacher.mean - 0.1)
    assert a.assessment.startswith("local: validity")
    assert reports[B].judgement is None and reports[B].teacher is None


def test_versions_carry_status_metrics_and_their_own_agreement(reports):
    v1, v2 = reports[A].versions
    assert (v1.version, v1.status, v1.metrics) == (1, "retired", {"eval_loss": 0.9})
    assert (v2.version, v2.status, v2.metrics["exact"]) == (2, "active", 0.8)
    assert v1.shadow.samples == 30 and v1.shadow.mean == pytest.approx(0.6)
    assert v1.created_at == "2025-03-01T08:00:00Z"


def test_traffic_share_fallbacks_and_cost(reports):
    a = reports[A]
    assert (a.calls, a.upstream_calls, a.local_calls) == (82, 62, 20)
    assert a.local_share == pytest.approx(20 / 82)
    assert a.fallbacks == 2
    # Without a price table the unpriced call is left out of both the spend and the mean.
    assert a.cost.upstream_spent_usd == pytest.approx(60 * COST_PER_CALL)
    assert a.cost.upstream_priced_calls == 60 and a.cost.estimated_calls == 0
    assert a.cost.mean_upstream_cost_usd == pytest.approx(COST_PER_CALL)
    assert a.cost.saved_usd == pytest.approx(20 * COST_PER_CALL)


def test_a_price_table_prices_calls_recorded_without_cost(store):
    (a,) = build_report(store.cursor(), A, prices=PriceTable.load(None))
    estimate = (1000 * 0.15 + 500 * 0.60) / 1_000_000  # gpt-4o-mini list prices
    assert a.cost.estimated_calls == 1
    assert a.cost.upstream_spent_usd == pytest.approx(60 * COST_PER_CALL + estimate)
    mean = (60 * COST_PER_CALL + estimate) / 61
    assert a.cost.saved_usd == pytest.approx(20 * mean)
    assert a.series.cost[-1].spent_usd == pytest.approx(a.cost.upstream_spent_usd)


def test_latency_percentiles(reports):
    latency = reports[A].latency
    # The 502 answered in 5 ms: failed calls say nothing about serving speed and are left out.
    assert latency.upstream.n == 61
    assert latency.upstream.p50 == pytest.approx(_quantile(UPSTREAM_LATENCIES, 0.5))
    assert latency.upstream.p95 == pytest.approx(_quantile(UPSTREAM_LATENCIES, 0.95))
    assert latency.local.p50 == pytest.approx(_quantile(LOCAL_LATENCIES, 0.5))
    assert latency.local.p95 == pytest.approx(_quantile(LOCAL_LATENCIES, 0.95))
    assert latency.shadow_local.n == 40
    assert latency.shadow_local.p50 == pytest.approx(_quantile(SHADOW_LOCAL_LATENCIES, 0.5))
    assert latency.shadow_upstream.p95 == pytest.approx(900.0)


def test_audit_and_why(reports):
    a = reports[A]
    assert [e.action for e in a.audit] == ["version", "promote", "state", "version"]
    assert a.audit[0].reason == 'version: {"version": 3, "status": "failed", "note": "OOM"}'
    # The newest entry that explains routing, not the bookkeeping row after it.
    assert a.why == PROMOTE_REASON
    assert a.audit[2].reason.startswith("state: ")  # no reason recorded: the detail stands in
    assert reports[C].why == "pinned to local@v1"
    # No audit yet: the policy's own reading of the site explains it.
    assert reports[B].why == reports[B].assessment == "learning: waiting for a trained version to shadow"


def test_time_series(reports):
    series = reports[A].series
    assert series.bucket_s == 300  # 6 hours of history fit in under 96 five-minute buckets
    assert sum(p.upstream for p in series.traffic) == 62
    assert sum(p.local for p in series.traffic) == 20
    assert all(p.t % 300 == 0 for p in series.traffic)
    assert series.cost[-1].spent_usd == pytest.approx(60 * COST_PER_CALL)
    assert series.cost[-1].saved_usd == pytest.approx(reports[A].cost.saved_usd)
    spent = [p.spent_usd for p in series.cost]
    assert spent == sorted(spent)
    by_version = {s.version: s.points for s in series.agreement}
    assert set(by_version) == {1, 2}
    # A version's points are its running mean with the confidence sequence so far.
    last = by_version[2][-1]
    all_v2 = V2_SCORES + DRIFT_SCORES
    assert last.samples == len(all_v2) and last.mean == pytest.approx(sum(all_v2) / len(all_v2))
    assert (last.low, last.high) == pytest.approx(confidence_sequence(all_v2, ALPHA / 2))
    assert by_version[1][0].samples == 1
    assert any(p.shadow_local_p50 is not None for p in series.latency)


def test_sites_without_data(reports):
    b, c = reports[B], reports[C]
    assert b.agreement is None and b.reported_version is None and b.versions == []
    assert b.local_share == 0.0 and b.cost.saved_usd == 0.0
    assert c.calls == 0 and c.local_share is None and c.cost.saved_usd is None
    assert c.agreement.samples == 0 and c.agreement.format() == "—"
    assert c.series.traffic == [] and c.series.agreement == []


def test_site_ref_by_name_prefix_and_unknown(store):
    cur = store.cursor()
    assert [r.id for r in build_report(cur, "classify_ticket")] == [A]
    assert [r.id for r in build_report(cur, "c0ff")] == [C]
    with pytest.raises(SiteNotFound):
        build_report(cur, "nope")


def test_to_dict_is_json(reports):
    data = json.loads(json.dumps([r.to_dict() for r in reports.values()]))
    a = next(d for d in data if d["id"] == A)
    assert a["agreement"]["samples"] == 50
    assert a["versions"][1]["metrics"] == {"eval_loss": 0.4, "exact": 0.8}
    assert a["series"]["traffic"][0].keys() == {"t", "upstream", "local", "local_share"}


# ---- terminal ------------------------------------------------------------------------------


def test_terminal_output(reports):
    buffer = io.StringIO()
    console = Console(file=buffer, width=160, color_system=None, legacy_windows=False)
    render_terminal(list(reports.values()), console)
    text = buffer.getvalue()
    a = reports[A]
    assert "classify_ticket" in text and A in text
    assert "local" in text and "v2" in text and "v1 retired, v2 active" in text
    assert "50 (+3 incomparable)" in text
    assert a.agreement.format() in text and "self-agreement 0.92" in text and "drift: agreement 0.88" in text
    assert "24.4% (20 of 82 calls)" in text
    assert "upstream p50 800 ms / p95 1.07 s" in text and "local p50 60 ms / p95 68 ms" in text
    assert "spent $0.1200 · saved $0.0400 (20 local calls × $0.0020)" in text
    assert "fallbacks" in text and PROMOTE_REASON in text
    # A site name is text, never rich markup.
    assert EVIL_NAME in text
    assert "no shadow samples yet" in text


def test_terminal_without_sites():
    buffer = io.StringIO()
    render_terminal([], Console(file=buffer, width=80, color_system=None))
    assert "no sites recorded yet" in buffer.getvalue()


# ---- HTML ----------------------------------------------------------------------------------


class _Plots(HTMLParser):
    """Collects plots (svg.plot and their empty-state notes) with the drawing elements they hold."""

    def __init__(self):
        super().__init__()
        self.plots: dict[tuple[str, str], dict] = {}
        self._current: dict | None = None
        self._empty: tuple[str, str] | None = None
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "svg" and "plot" in (attrs.get("class") or "").split():
            self._current = self.plots[(attrs["data-site"], attrs["data-plot"])] = {"paths": [], "empty": None}
        elif tag == "div" and attrs.get("class") == "plot-empty":
            self._empty = (attrs["data-site"], attrs["data-plot"])
            self.plots[self._empty] = {"paths": [], "empty": ""}
        elif self._current is not None and tag in ("path", "polyline"):
            self._current["paths"].append(attrs)

    def handle_endtag(self, tag):
        if tag == "svg":
            self._current = None
        elif tag == "div":
            self._empty = None

    def handle_data(self, data):
        if self._empty is not None:
            self.plots[self._empty]["empty"] += data


def _line_paths(plot: dict) -> list[dict]:
    return [p for p in plot["paths"] if "line" in (p.get("class") or "").split() and len(p.get("d") or "") > 10]


def _check_plots(page: str) -> None:
    parser = _Plots()
    parser.feed(page)
    plots = parser.plots
    for kind in ("agreement", "traffic", "latency", "cost"):
        assert _line_paths(plots[(A, kind)]), f"site A {kind} plot has no drawn line"
    series = {p["data-series"] for p in _line_paths(plots[(A, "agreement")])}
    assert series == {"v1", "v2"}
    assert plots[(B, "agreement")]["empty"] == "no shadow samples yet"
    assert _line_paths(plots[(B, "traffic")])
    for kind in ("agreement", "traffic", "latency", "cost"):
        assert plots[(C, kind)]["empty"], f"empty site C {kind} should show a note"
    assert "script" not in parser.tags and "link" not in parser.tags and "img" not in parser.tags


@pytest.fixture(scope="module")
def page(reports):
    return render_html(list(reports.values()), generated_at=datetime(2025, 3, 2, tzinfo=UTC))


def test_html_is_self_contained_and_escaped(page):
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "@import" not in page and "url(" not in page
    # The SVG namespace is the only URL on the page, and it is a name, not a fetch.
    assert page.count("://") == page.count('xmlns="http://www.w3.org/2000/svg"')
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; [bold]co" in page
    assert 'data-site="b0000000beef"' in page
    assert "teacher 0.92" in page and "bar 0.82 (teacher - margin)" in page
    _check_plots(page)


def test_html_without_sites():
    page = render_html([])
    assert "no sites recorded yet" in page and "<svg" not in page


# ---- in a real browser ---------------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def rendered(page, tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); the browser checks need it")
    tmp = tmp_path_factory.mktemp("chromium")
    html_file = tmp / "report.html"
    html_file.write_text(page, encoding="utf-8")
    dom = _chromium(tmp, "--dump-dom", html_file.as_uri())
    assert dom.returncode == 0, dom.stderr
    shot = tmp / "shot.png"
    result = _chromium(tmp, f"--screenshot={shot}", "--window-size=1200,2000", html_file.as_uri())
    assert result.returncode == 0 and shot.exists(), result.stderr
    return dom.stdout, shot


def test_chromium_dom_holds_the_plots(rendered):
    dom, _ = rendered
    assert "classify_ticket" in dom
    _check_plots(dom)


def test_chromium_screenshot_is_not_blank(rendered):
    from PIL import Image

    _, shot = rendered
    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        assert rgb.size == (1200, 2000)
        colours = rgb.getcolors(maxcolors=1 << 20)
    assert len(colours) > 50, f"only {len(colours)} colours: the page looks blank"
    # The v2 agreement line's legend swatch is solid: its colour must be on screen.
    target = tuple(int(VERSION_COLORS[1][i : i + 2], 16) for i in (1, 3, 5))
    near = sum(count for count, colour in colours if max(abs(a - b) for a, b in zip(colour, target)) <= 6)
    assert near >= 100, "the agreement plot's v2 colour is not on the screenshot"
