"""The blind review flow end to end: a real proxy on 127.0.0.1 over a real DuckDB file, the CLI
(`review plan / invite / results / export / import / rubric`), and the `/review` page driven by
the keyboard in headless Chromium (Debian's, through Playwright; nothing is downloaded)."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from tests.conftest import open_test_store, query_store, run_cli, start_proxy
from tests.support.review_data import MAP_SITE, TEXT_SITE, populate

STORE_BACKENDS = ("duckdb", "postgresql")  # blind review: invites, the page, judgments, results on both stores

CHROMIUM = shutil.which("chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def review_proxy(fake_upstream, isolated_data_dir):
    store = open_test_store(isolated_data_dir / "understudy.duckdb")
    populate(store, pairs_per_version={1: 3, 2: 5}, text_pairs=2)
    store.close()
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    yield proxy
    proxy.stop()


def test_review_routes_need_a_token(review_proxy):
    for path in ("/review", "/review/api/next"):
        for headers in ({}, {"authorization": "Bearer wrong"}):
            response = httpx.get(review_proxy.url + path, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_review_token"
    assert httpx.get(review_proxy.url + "/review", params={"token": "wrong"}).status_code == 401
    posted = httpx.post(review_proxy.url + "/review/api/judgments", json={"item": "x"})
    assert posted.status_code == 401 and posted.json()["error"]["type"] == "authentication_error"
    # Admin routes of the protocol take the admin token only.
    assert httpx.get(review_proxy.url + "/admin/review/results", params={"site": MAP_SITE}).status_code == 401
    # The admin token opens the page (as reviewer "admin").
    assert httpx.get(review_proxy.url + "/review", params={"token": review_proxy.admin_token}).status_code == 200


def test_cli_errors_are_one_line(review_proxy):
    out = review_proxy.cli("review", "plan", "nope", "--pairs", "3", check=False)
    assert out.returncode == 1 and out.stderr.strip() == "error: no site matches 'nope'"
    out = review_proxy.cli("review", "plan", MAP_SITE, "--pairs", "0", check=False)
    assert out.returncode == 1 and out.stderr.startswith("error: --pairs")
    out = review_proxy.cli("review", "invite", "admin", check=False)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and out.stderr.startswith("error: a reviewer name")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_keyboard_review_is_stored_and_counted(review_proxy, tmp_path):
    from playwright.sync_api import sync_playwright

    plan = json.loads(review_proxy.cli("review", "plan", MAP_SITE, "--pairs", "4", "--shared", "1", "--json").stdout)
    assert plan["drawn"] == 4 and {s["stratum"] for s in plan["strata"]} == {"v1", "v2"}
    url = review_proxy.cli("review", "invite", "alice").stdout.strip()
    assert url.startswith(review_proxy.url + "/review?token=")

    # The pair the API hands out carries neither the version nor which side is local.
    token = url.split("token=", 1)[1]
    served = httpx.get(review_proxy.url + "/review/api/next", headers={"authorization": f"Bearer {token}"}).json()[
        "item"
    ]
    assert not {"local_side", "version", "stratum", "call_id"} & set(served)
    assert "local" not in json.dumps(served) and "upstream" not in json.dumps(served)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page()
            requests_seen: list[str] = []
            page.on("request", lambda r: requests_seen.append(r.url))
            page.goto(url)
            page.wait_for_selector("#side-A img")
            assert page.url == review_proxy.url + "/review"  # the token left the address bar
            item = served["item"]
            # Nothing in the DOM says which side is the local model's.
            dom = page.content()
            assert (
                "local" not in dom.lower().replace("location", "").replace("localstorage", "")
                and "upstream" not in dom.lower()
            )
            assert page.locator("#side-A img").get_attribute("src").startswith("data:image/png;base64,")

            # Enter with nothing scored: refused on the page, nothing stored (negative control).
            page.keyboard.press("Enter")
            assert "still to score" in page.locator("#status").inner_text()

            # Arrows move, digits score: → to B, "1" (B=1, on to structure A), ↑ back to gameplay A,
            # "4" (A=4, on to B), "2" (B=2 replaces 1), then structure 5/3, constraints 3/3.
            for key in ["ArrowRight", "1", "ArrowUp", "4", "2", "5", "3", "3", "3"]:
                page.keyboard.press(key)
            cells = {
                (c.get_attribute("data-criterion"), c.get_attribute("data-side")): c.inner_text()
                for c in page.locator("td.cell").all()
            }
            assert cells == {
                ("gameplay", "A"): "4",
                ("gameplay", "B"): "2",
                ("structure", "A"): "5",
                ("structure", "B"): "3",
                ("constraints", "A"): "3",
                ("constraints", "B"): "3",
            }
            page.keyboard.press("ArrowLeft")  # on the preference row: from tie to A
            assert page.locator("span.pref.chosen").inner_text() == "A"
            page.keyboard.press("c")
            page.keyboard.type("A reads better")
            page.keyboard.press("Escape")
            page.keyboard.press("Enter")
            page.wait_for_function("() => document.querySelector('#status').textContent === 'stored'")
            page.wait_for_function("() => document.querySelector('#progress').textContent.endsWith(': 1')")
            assert all(u.startswith(review_proxy.url) or u.startswith("data:") for u in requests_seen), requests_seen
        finally:
            browser.close()

    # The results command reflects the judgment, unblinded with the stored side mapping.
    results = json.loads(review_proxy.cli("review", "results", MAP_SITE, "--json").stdout)
    assert results["judgments"] == 1 and results["reviewers"] == ["alice"]
    rows = httpx.get(
        review_proxy.url + "/admin/review/export",
        params={"site": MAP_SITE},
        headers={"authorization": f"Bearer {review_proxy.admin_token}"},
    ).json()
    assert len(rows["items"]) == 4
    text = review_proxy.cli("review", "results", MAP_SITE).stdout
    assert "gameplay" in text and "constraints" in text and "preference:" in text
    review_proxy.stop()
    [(reviewer, scores, preference, local_side, comment, version)] = query_store(
        review_proxy.data_dir,
        "SELECT j.reviewer, j.scores, j.preference, j.local_side, j.comment, i.version "
        "FROM review_judgments j JOIN review_items i ON i.id = j.item_id",
    )
    [(stored_side,)] = query_store(review_proxy.data_dir, "SELECT local_side FROM review_items WHERE id = ?", [item])
    assert (reviewer, preference, comment, local_side) == ("alice", "A", "A reads better", stored_side)
    assert json.loads(scores) == {
        "gameplay": {"A": 4, "B": 2},
        "structure": {"A": 5, "B": 3},
        "constraints": {"A": 3, "B": 3},
    }
    local_gameplay = 4 if local_side == "A" else 2
    assert results["criteria"]["gameplay"]["local"]["mean"] == local_gameplay
    assert results["criteria"]["gameplay"]["upstream"]["mean"] == 6 - local_gameplay
    assert results["preference"]["local" if local_side == "A" else "upstream"]["count"] == 1
    assert f"v{version}" in results["by_version"]


def test_offline_export_import_and_rubric_without_a_proxy(fake_upstream, isolated_data_dir, tmp_path):
    store = open_test_store(isolated_data_dir / "understudy.duckdb")
    populate(store, pairs_per_version={1: 3}, text_pairs=3)
    store.close()
    data = ["--data-dir", str(isolated_data_dir)]
    rubric = tmp_path / "rubric.toml"
    rubric.write_text('[[criteria]]\nname = "faithful"\nlabel = "Faithful to the ticket"\n')
    assert run_cli("review", "rubric", TEXT_SITE, str(rubric), *data).stdout.strip() == "rubric: faithful"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = run_cli("review", "rubric", TEXT_SITE, str(bad), *data, check=False)
    assert out.returncode == 1 and out.stderr.startswith("error: rubric") and "not JSON" in out.stderr
    run_cli("review", "plan", TEXT_SITE, "--pairs", "3", *data)
    exported = tmp_path / "set.json"
    run_cli("review", "export", TEXT_SITE, str(exported), *data)
    review_set = json.loads(exported.read_text())
    assert [c["name"] for c in review_set["rubric"]["criteria"]] == ["faithful"]
    review_set["judgments"] = [
        {"item": it["item"], "scores": {"faithful": {"A": 4, "B": 4}}, "preference": "tie"}
        for it in review_set["items"]
    ]
    exported.write_text(json.dumps(review_set))
    out = run_cli("review", "import", str(exported), "--reviewer", "dana", *data)
    assert out.stdout.strip() == "imported 3 judgments (dana)"
    results = json.loads(run_cli("review", "results", TEXT_SITE, "--json", *data).stdout)
    assert results["judgments"] == 3 and results["preference"]["tie"]["share"] == 1.0
    assert results["criteria"]["faithful"]["difference"]["mean"] == 0.0
    # The invite works without a proxy too: the URL names the configured address.
    url = run_cli("review", "invite", "erin", *data).stdout.strip()
    assert url.startswith("http://127.0.0.1:8000/review?token=")
    # And the HTML report carries the review results.
    page = tmp_path / "report.html"
    run_cli("report", "--html", str(page), *data)
    html = page.read_text()
    assert 'data-section="review"' in html and "Faithful to the ticket" in html
