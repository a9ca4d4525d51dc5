"""The review protocol on a real DuckDB store: rubrics, stratified plans and sample sizes, the blind
order, judgment validation, the results' intervals and Krippendorff's alpha, offline sets."""

from __future__ import annotations

import base64
import io
import json
import math

import krippendorff
import numpy as np
import pytest
from PIL import Image
from scipy import stats

from tests.conftest import open_test_store
from tests.support.review_data import MAP_SITE, TEXT_SITE, populate
from understudy.reporting import reviews
from understudy.reporting.reviews import ReviewError
from understudy.store import SiteNotFound

CRITERIA = ("gameplay", "structure", "constraints")


@pytest.fixture
def store(tmp_path):
    store = open_test_store(tmp_path / "understudy.duckdb")
    populate(store, pairs_per_version={1: 10, 2: 30}, text_pairs=4)
    yield store
    store.close()


def _judge(cur, reviewer, item, local, upstream, preferred="local", comment=None):
    """Score the local and upstream answers of a pair, whichever side each is on."""
    local_side = cur.execute("SELECT local_side FROM review_items WHERE id = ?", [item]).fetchone()[0]
    up_side = "B" if local_side == "A" else "A"
    scores = {c: {local_side: local[i], up_side: upstream[i]} for i, c in enumerate(CRITERIA)}
    preference = {"local": local_side, "upstream": up_side, "tie": "tie"}[preferred]
    return reviews.record_judgment(
        cur, reviewer, {"item": item, "scores": scores, "preference": preference, "comment": comment}
    )


def _items(cur):
    return [i for (i,) in cur.execute("SELECT id FROM review_items ORDER BY shared DESC, created_at, id").fetchall()]


# ---- rubrics -------------------------------------------------------------------------------


def test_rpg_sites_get_the_rpg_rubric_others_the_default(store):
    cur = store.cursor()
    assert [c["name"] for c in reviews.rubric_for(cur, MAP_SITE)["criteria"]] == list(CRITERIA)
    assert [c["label"] for c in reviews.rubric_for(cur, MAP_SITE)["criteria"]][0] == "Gameplay viability and fun"
    assert [c["name"] for c in reviews.rubric_for(cur, TEXT_SITE)["criteria"]] == [
        "correctness",
        "usefulness",
        "format",
    ]


def test_a_rubric_file_replaces_the_default_and_bad_ones_are_refused(store):
    cur = store.cursor()
    reviews.set_rubric(cur, "summarise", {"criteria": [{"name": "faithful", "label": "Faithful to the ticket"}]})
    assert reviews.rubric_for(cur, TEXT_SITE)["criteria"] == [
        {"name": "faithful", "label": "Faithful to the ticket", "description": ""}
    ]
    for bad in (
        {},
        {"criteria": []},
        {"criteria": [{"name": "Bad Name"}]},
        {"criteria": [{"name": "a"}, {"name": "a"}]},
    ):
        with pytest.raises(ReviewError):
            reviews.set_rubric(cur, TEXT_SITE, bad)
    with pytest.raises(SiteNotFound):
        reviews.rubric_for(cur, "no-such-site")


# ---- plans ---------------------------------------------------------------------------------


def test_plan_is_stratified_by_version_with_every_stratum_drawn(store):
    cur = store.cursor()
    plan = reviews.draw_plan(cur, MAP_SITE, 8, seed=3)
    assert {s["stratum"]: (s["available"], s["drawn"]) for s in plan["strata"]} == {"v1": (10, 2), "v2": (30, 6)}
    rows = cur.execute("SELECT version, count(*) FROM review_items GROUP BY 1 ORDER BY 1").fetchall()
    assert rows == [(1, 2), (2, 6)]
    # A second plan draws only pairs not drawn before; a small stratum still gets one.
    again = reviews.draw_plan(cur, MAP_SITE, 4, seed=3)
    assert {s["stratum"]: s["drawn"] for s in again["strata"]} == {"v1": 1, "v2": 3}
    assert cur.execute("SELECT count(DISTINCT (call_id, version)) FROM review_items").fetchone()[0] == 12


def test_plan_by_a_call_argument_reads_inside_object_arguments(store):
    plan = reviews.draw_plan(store.cursor(), MAP_SITE, 9, by="difficulty", seed=0)
    assert [(s["stratum"], s["drawn"]) for s in plan["strata"]] == [
        ("difficulty=1", 3),
        ("difficulty=2", 3),
        ("difficulty=3", 3),
    ]
    dotted = reviews.draw_plan(store.cursor(), MAP_SITE, 3, by="level.difficulty", seed=0)
    assert [s["stratum"] for s in dotted["strata"]] == [
        "level.difficulty=1",
        "level.difficulty=2",
        "level.difficulty=3",
    ]


def test_plan_refusals(store):
    with pytest.raises(ReviewError, match="at least 1"):
        reviews.draw_plan(store.cursor(), MAP_SITE, 0)
    reviews.draw_plan(store.cursor(), TEXT_SITE, 10)  # all four
    with pytest.raises(ReviewError, match="no shadow pairs left"):
        reviews.draw_plan(store.cursor(), TEXT_SITE, 1)


def test_sample_size_for_a_quarter_point_interval(store):
    cur = store.cursor()
    plan = reviews.draw_plan(cur, MAP_SITE, 40, shared=0, seed=1)
    # sd 1 assumed: (1.96 * 1 / 0.25)^2 = 61.5 -> 62; the worst case on 1-5 (sd 2) -> 246.
    assert plan["sample_size"]["gameplay"] == {
        "sd": 1.0,
        "sd_source": "assumed (fewer than 10 judgments)",
        "judgments": 62,
        "worst_case": 246,
    }
    # With judgments in, the observed spread decides: a steady reviewer needs far fewer.
    for k, item in enumerate(_items(cur)[:20]):
        _judge(cur, "alice", item, (4 + k % 2, 4, 4), (4, 4, 3 + k % 2))
    sizes = reviews.sample_sizes(cur, MAP_SITE)
    sd = max(np.std([4 + k % 2 for k in range(20)], ddof=1), np.std([k % 2 for k in range(20)], ddof=1))
    assert sizes["gameplay"]["sd"] == pytest.approx(sd, abs=1e-3)
    assert sizes["gameplay"]["judgments"] == math.ceil((1.959963984540054 * sizes["gameplay"]["sd"] / 0.25) ** 2) < 62
    assert sizes["gameplay"]["sd_source"] == "observed over 20 judgments"


# ---- the blind order -----------------------------------------------------------------------


def test_blind_order_is_random_and_the_view_hides_it(store):
    cur = store.cursor()
    reviews.draw_plan(cur, MAP_SITE, 40, seed=0)
    sides = [s for (s,) in cur.execute("SELECT local_side FROM review_items").fetchall()]
    # 40 fair coin flips: both sides appear and neither dominates (fails by chance with p < 1e-4).
    assert 8 <= sides.count("A") <= 32 and sides.count("A") + sides.count("B") == 40
    for item, local_side, local, upstream in cur.execute(
        "SELECT id, local_side, local_output, upstream_output FROM review_items"
    ).fetchall():
        view = reviews.blind_view(cur, item)
        text = json.dumps(view)
        assert "local" not in text and "upstream" not in text and "version" not in text and "stratum" not in text
        shown = {side: json.loads(view["sides"][side]["text"]) for side in "AB"}
        assert shown[local_side] == json.loads(local)
        assert shown["B" if local_side == "A" else "A"] == json.loads(upstream)


def test_the_same_seed_draws_the_same_pairs_but_not_the_same_sides(tmp_path):
    draws = []
    for k in range(2):
        store = open_test_store(tmp_path / f"s{k}.duckdb")
        populate(store, pairs_per_version={1: 20, 2: 20})
        reviews.draw_plan(store.cursor(), MAP_SITE, 30, seed=7)
        draws.append(
            store.cursor().execute("SELECT call_id, version, local_side FROM review_items ORDER BY 1, 2").fetchall()
        )
        store.close()
    assert [r[:2] for r in draws[0]] == [r[:2] for r in draws[1]]
    assert [r[2] for r in draws[0]] != [r[2] for r in draws[1]]  # 30 sides alike by chance: p = 2^-30


def test_maps_are_drawn_as_images_and_other_answers_as_text(store):
    cur = store.cursor()
    reviews.draw_plan(cur, MAP_SITE, 1, seed=0)
    side = reviews.next_item(cur, "alice")["sides"]["A"]
    assert side["kind"] == "image" and side["image"].startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(side["image"].split(",", 1)[1]))) as image:
        assert image.size == (8 * 16, 6 * 16)  # the renderer's 16-pixel cells on the 8 x 6 level
    assert reviews.render_output("not json", "Map") == {"kind": "text", "text": "not json"}
    assert reviews.render_output('{"a":1}', "Level") == {"kind": "json", "text": '{\n  "a": 1\n}'}
    broken = reviews.render_output('{"level": 3}', "Map")  # a map the renderer cannot read stays JSON
    assert broken["kind"] in ("json", "image")


def test_input_summary_shows_the_task_and_arguments(store):
    cur = store.cursor()
    reviews.draw_plan(cur, MAP_SITE, 1, seed=0)
    summary = reviews.next_item(cur, "alice")["input"]
    assert summary["task"].startswith("Lay out the map for the given level")
    assert [a["name"] for a in summary["arguments"]] == ["level"] and '"difficulty"' in summary["arguments"][0]["value"]
    reviews.draw_plan(cur, TEXT_SITE, 1, seed=0)
    text = reviews.next_item(cur, "bob", TEXT_SITE)["input"]
    assert text["task"].startswith("Summarise ticket") and text["arguments"] == []


# ---- judgments -----------------------------------------------------------------------------


def test_judgments_are_validated_and_stored_with_the_side_mapping(store):
    cur = store.cursor()
    reviews.draw_plan(cur, MAP_SITE, 2, seed=0)
    item = reviews.next_item(cur, "alice")["item"]
    good = {"item": item, "scores": {c: {"A": 3, "B": 4} for c in CRITERIA}, "preference": "B"}
    for bad, message in [
        ({**good, "item": "nope"}, "no review pair"),
        ({**good, "scores": {c: {"A": 3, "B": 4} for c in CRITERIA[:2]}}, "constraints"),
        ({**good, "scores": {**good["scores"], "gameplay": {"A": 6, "B": 4}}}, "1 to 5"),
        ({**good, "scores": {**good["scores"], "gameplay": {"A": True, "B": 4}}}, "1 to 5"),
        ({**good, "preference": "local"}, "A, B or tie"),
        ({**good, "comment": "x" * 5000}, "at most"),
    ]:
        with pytest.raises(ReviewError, match=message):
            reviews.record_judgment(cur, "alice", bad)
    assert cur.execute("SELECT count(*) FROM review_judgments").fetchone()[0] == 0
    reviews.record_judgment(cur, "alice", {**good, "comment": "B is tidier"})
    row = cur.execute(
        "SELECT reviewer, scores, preference, local_side, comment, source FROM review_judgments"
    ).fetchone()
    local_side = cur.execute("SELECT local_side FROM review_items WHERE id = ?", [item]).fetchone()[0]
    assert row[0] == "alice" and json.loads(row[1])["gameplay"] == {"A": 3, "B": 4}
    assert row[2:] == ("B", local_side, "B is tidier", "page")
    # The same reviewer judging again replaces the earlier judgment.
    reviews.record_judgment(cur, "alice", {**good, "preference": "tie"})
    assert cur.execute("SELECT count(*), any_value(preference) FROM review_judgments").fetchone() == (1, "tie")


def test_shared_pairs_go_to_everyone_the_rest_to_one(store):
    cur = store.cursor()
    reviews.draw_plan(cur, MAP_SITE, 4, shared=2, seed=0)
    seen = {"alice": [], "bob": []}
    for reviewer in ("alice", "bob"):
        while (view := reviews.next_item(cur, reviewer)) is not None:
            seen[reviewer].append(view["item"])
            _judge(cur, reviewer, view["item"], (3, 3, 3), (4, 4, 4))
    shared = {i for (i,) in cur.execute("SELECT id FROM review_items WHERE shared").fetchall()}
    assert set(seen["alice"][:2]) == shared and len(seen["alice"]) == 4
    assert set(seen["bob"]) == shared  # alice took the unshared pairs already


def test_invite_tokens(store):
    cur = store.cursor()
    token = reviews.invite(cur, "alice")
    assert reviews.reviewer_for_token(cur, token) == "alice"
    assert reviews.reviewer_for_token(cur, token[:-1] + ("x" if token[-1] != "x" else "y")) is None
    assert token not in json.dumps(cur.execute("SELECT * FROM reviewers").fetchall(), default=str)
    again = reviews.invite(cur, "alice")
    assert reviews.reviewer_for_token(cur, token) is None and reviews.reviewer_for_token(cur, again) == "alice"
    for bad in ("", "admin", "a b", "x" * 65):
        with pytest.raises(ReviewError):
            reviews.invite(cur, bad)


# ---- results -------------------------------------------------------------------------------


def _t_interval(values):
    n = len(values)
    mean = float(np.mean(values))
    half = stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


def test_results_means_intervals_difference_and_preference(store):
    cur = store.cursor()
    reviews.draw_plan(cur, MAP_SITE, 12, shared=0, seed=2)
    local = [2, 3, 3, 4, 2, 3, 4, 3, 2, 3, 3, 4]
    upstream = [4, 4, 3, 5, 4, 4, 5, 4, 3, 4, 5, 4]
    prefs = ["upstream"] * 8 + ["tie"] * 3 + ["local"]
    for k, item in enumerate(_items(cur)):
        _judge(cur, "alice", item, (local[k], 3, 3), (upstream[k], 3, 3), prefs[k])
    result = reviews.results(cur, MAP_SITE)
    g = result["criteria"]["gameplay"]
    assert (g["local"]["mean"], g["local"]["low"], g["local"]["high"]) == pytest.approx(_t_interval(local))
    assert (g["upstream"]["mean"], g["upstream"]["low"], g["upstream"]["high"]) == pytest.approx(_t_interval(upstream))
    diff = [a - b for a, b in zip(local, upstream)]
    assert (g["difference"]["mean"], g["difference"]["low"], g["difference"]["high"]) == pytest.approx(
        _t_interval(diff)
    )
    assert g["difference"]["high"] < 0  # the upstream is clearly better here
    # Negative control: equal scores give a difference of exactly zero, no interval width.
    s = result["criteria"]["structure"]["difference"]
    assert (s["mean"], s["low"], s["high"]) == (0.0, 0.0, 0.0)
    p = result["preference"]
    assert p["upstream"]["share"] == pytest.approx(8 / 12) and p["local"]["count"] == 1 and p["tie"]["count"] == 3
    # Wilson interval for 8 of 12
    z = 1.959963984540054
    centre = (8 / 12 + z * z / 24) / (1 + z * z / 12)
    half = z * math.sqrt((8 / 12) * (4 / 12) / 12 + z * z / (4 * 144)) / (1 + z * z / 12)
    assert (p["upstream"]["low"], p["upstream"]["high"]) == pytest.approx((centre - half, centre + half))
    assert result["criteria"]["gameplay"]["alpha"] is None and p["alpha"] is None  # one reviewer: no agreement
    assert set(result["by_version"]) <= {"v1", "v2"}
    assert sum(v["judgments"] for v in result["by_version"].values()) == 12


def test_krippendorff_alpha_on_the_shared_subset(store):
    cur = store.cursor()
    reviews.draw_plan(cur, MAP_SITE, 10, shared=10, seed=4)
    items = _items(cur)
    alice = [(1, 2), (2, 3), (3, 4), (4, 5), (5, 4), (2, 2), (3, 1), (4, 4), (1, 5), (5, 3)]
    for k, item in enumerate(items):
        a_local, a_up = alice[k]
        _judge(cur, "alice", item, (a_local, a_local, 3), (a_up, a_up, 3), "local" if a_local > a_up else "upstream")
        # bob agrees on gameplay exactly, and disagrees on structure (scores reversed)
        _judge(
            cur, "bob", item, (a_local, 6 - a_local, 3), (a_up, 6 - a_up, 3), "local" if a_local > a_up else "upstream"
        )
    result = reviews.results(cur, MAP_SITE)
    assert result["criteria"]["gameplay"]["alpha"] == {"alpha": pytest.approx(1.0), "pairs": 10}
    structure = result["criteria"]["structure"]["alpha"]["alpha"]
    expected = krippendorff.alpha(
        reliability_data=np.array(
            [[v for a in alice for v in (a[0], a[1])], [v for a in alice for v in (6 - a[0], 6 - a[1])]], dtype=float
        ),
        level_of_measurement="ordinal",
        value_domain=[1, 2, 3, 4, 5],
    )
    assert structure == pytest.approx(expected) and structure < 0  # the negative control: systematic disagreement
    assert result["criteria"]["constraints"]["alpha"]["alpha"] is None  # everyone said 3: undefined, not perfect
    assert result["preference"]["alpha"]["alpha"] == pytest.approx(1.0)


# ---- offline sets --------------------------------------------------------------------------


def test_export_is_blind_and_import_stores_all_or_nothing(store, tmp_path):
    cur = store.cursor()
    reviews.draw_plan(cur, MAP_SITE, 3, seed=5)
    exported = reviews.export_set(cur, MAP_SITE)
    text = json.dumps(exported)
    assert len(exported["items"]) == 3 and "local" not in text.replace("local_", "") and "upstream" not in text
    assert "local_side" not in text
    sides = dict(cur.execute("SELECT id, local_side FROM review_items").fetchall())
    filled = json.loads(text)
    filled["judgments"] = [
        {"item": it["item"], "scores": {c: {"A": 5, "B": 1} for c in CRITERIA}, "preference": "A"}
        for it in filled["items"]
    ]
    broken = json.loads(json.dumps(filled))
    broken["judgments"][2]["scores"].pop("gameplay")
    with pytest.raises(ReviewError, match="judgment 3"):
        reviews.import_set(cur, broken, "carol")
    assert cur.execute("SELECT count(*) FROM review_judgments").fetchone()[0] == 0
    with pytest.raises(ReviewError, match="no reviewer"):
        reviews.import_set(cur, filled)
    with pytest.raises(ReviewError, match="not an exported review set"):
        reviews.import_set(cur, {"judgments": []}, "carol")
    assert reviews.import_set(cur, filled, "carol") == {"imported": 3, "reviewers": ["carol"], "sites": [MAP_SITE]}
    result = reviews.results(cur, MAP_SITE)
    # Side A got 5 every time: the local mean is 5 exactly where the local answer was on side A.
    expected_local = np.mean([5 if sides[it["item"]] == "A" else 1 for it in filled["items"]])
    assert result["criteria"]["gameplay"]["local"]["mean"] == pytest.approx(expected_local)
    assert cur.execute("SELECT DISTINCT source FROM review_judgments").fetchall() == [("import",)]
