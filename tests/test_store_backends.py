"""The store interface on both backends: the DuckDB file and a real PostgreSQL server.

Every test here runs twice (`STORE_BACKENDS`). Two `Store` objects on one PostgreSQL database
are what two proxy processes are: separate connections, no shared memory.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import pytest

from tests.conftest import open_test_store
from tests.support import rows
from understudy.routing.policy import Decision, SiteState
from understudy.routing.registry import StaleDecision, apply_decision, register_version
from understudy.rows import CallRow, SiteRow
from understudy.store import SiteNameTaken, SiteNotFound, Store
from understudy.store_postgres import translate

STORE_BACKENDS = ("duckdb", "postgresql")
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def site_row(site_id: str, name: str) -> SiteRow:
    return rows.site_row(site_id, name, created_at=NOW)


def call_row(call_id: str, site_id: str, text: str = '{"color": "teal"}') -> CallRow:
    request = json.dumps({"messages": [{"role": "user", "content": call_id}]})
    response = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
    return rows.call_row(call_id, site_id, ts=NOW, request=request, response=response)


@pytest.fixture
def store(tmp_path):
    opened = open_test_store(tmp_path / "u.duckdb")
    yield opened
    opened.close()


def second_process_view(store: Store) -> Store | None:
    """Another process's store on the same database (None on DuckDB: one writing process only)."""
    return Store(store.url) if store.is_postgres else None


def test_the_same_calls_read_back_the_same_on_either_backend(store):
    store.write_batch(
        sites=[site_row("s1", "pick_color"), site_row("s2", "pick_size")],
        calls=[call_row(f"c{n}", "s1" if n % 3 else "s2") for n in range(30)],
    )
    store.write_batch(sites=[site_row("s1", "pick_color")])  # a site another batch (process) made: no error
    summaries = {row["id"]: row for row in store.site_summaries()}
    assert summaries["s1"]["calls"] == 20 and summaries["s2"]["calls"] == 10
    assert summaries["s1"]["valid_rate"] == 1.0 and isinstance(summaries["s1"]["valid_rate"], float)
    recent = store.recent_calls("pick_color", limit=3)
    assert len(recent) == 3 and recent[0]["request"].startswith('{"messages"')  # JSON comes back as text
    with pytest.raises(SiteNotFound, match="matches 2 sites"):
        store.resolve_site("s")  # an ambiguous prefix
    store.rename_site("s1", "colour")
    assert store.resolve_site("pick_color").id == "s1"  # a former name still finds it
    with pytest.raises(SiteNameTaken):
        store.rename_site("s2", "colour")
    assert store.call_count() == 30


def test_a_batch_that_fails_writes_nothing(store):
    store.write_batch(calls=[call_row("c1", "s1")])
    with pytest.raises(Exception):  # noqa: B017 - each backend raises its own driver's unique-violation error
        store.write_batch(sites=[site_row("s9", "x")], calls=[call_row("c2", "s1"), call_row("c1", "s1")])  # dup id
    assert store.call_count() == 1 and [r.id for r in store.site_records()] == []


def test_a_decision_is_compare_and_set_across_processes(store):
    store.write_batch(sites=[site_row("s1", "pick_color")])
    register_version(store, "s1", {"verified": True, "adapter_path": None, "metrics": {}})
    seen = store.resolve_site("s1")
    assert (seen.state, seen.active_version) == ("shadow", 1)
    other = second_process_view(store) or store
    try:
        # Another process (or the operator) moves the site first ...
        apply_decision(
            other,
            other.resolve_site("s1"),
            Decision(SiteState.LOCAL, "promoted there"),
            actor="policy",
            expected=other.resolve_site("s1"),
        )
        # ... so this process's decision, computed from what it saw, is refused and writes nothing.
        with pytest.raises(StaleDecision):
            apply_decision(store, seen, Decision(SiteState.LEARNING, "demoted here"), expected=seen)
        assert store.resolve_site("s1").state == "local"
        # Control: from the current record the same decision goes through.
        current = store.resolve_site("s1")
        apply_decision(store, current, Decision(SiteState.LEARNING, "demoted here"), expected=current)
        assert other.resolve_site("s1").state == "learning"
    finally:
        if other is not store:
            other.close()


def test_two_writers_at_once_lose_nothing(store):
    """Two processes' writers commit batches at the same time: every row lands once."""
    if not store.is_postgres:
        pytest.skip("one DuckDB file has one writing process, and in it one writer thread (the recorder's)")
    other = second_process_view(store)
    errors = []

    def write(target: Store, prefix: str) -> None:
        try:
            for batch in range(20):
                target.write_batch(
                    sites=[site_row("s1", "pick_color")],
                    calls=[call_row(f"{prefix}-{batch}-{n}", "s1") for n in range(25)],
                )
        except Exception as exc:  # pragma: no cover - the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(target, prefix)) for target, prefix in ((store, "a"), (other, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert store.call_count() == 2 * 20 * 25
        assert [r.id for r in store.site_records()] == ["s1"]
    finally:
        other.close()


def test_translation_keeps_duckdb_meaning(store):
    """The rewrites the PostgreSQL translation makes, run on both backends with the same results."""
    store.write_batch(
        sites=[site_row("s1", "a"), site_row("s2", "b")],
        calls=[call_row(f"c{n}", "s1" if n < 4 else "s2") for n in range(6)],
    )
    cur = store.cursor()
    assert sorted(cur.execute("SELECT site_id, count(*) FROM calls GROUP BY ALL").fetchall()) == [("s1", 4), ("s2", 2)]
    assert cur.execute("SELECT count(*) FROM (SELECT id FROM calls WHERE status = ?)", [200]).fetchone() == (6,)
    assert cur.execute("SELECT count(*) FROM calls WHERE response LIKE '%teal%' AND id LIKE 'c%'").fetchone() == (6,)
    assert (
        cur.execute("SELECT json_extract(request, '$.messages[0].content')::VARCHAR FROM calls WHERE id = 'c1'")
        .fetchone()[0]
        .strip('"')
        == "c1"
    )
    cur.execute(
        "INSERT OR REPLACE INTO reviewers (name, token_sha256, created_at) VALUES (?, ?, ?)", ["ann", "h1", NOW]
    )
    cur.execute(
        "INSERT OR REPLACE INTO reviewers (name, token_sha256, created_at) VALUES (?, ?, ?)", ["ann", "h2", NOW]
    )
    assert cur.execute("SELECT token_sha256 FROM reviewers").fetchall() == [("h2",)]


def test_translated_sql_is_postgres_sql():
    assert translate("SELECT a FROM (SELECT a FROM t) WHERE b = ? AND c LIKE 'x%'") == (
        "SELECT a FROM (SELECT a FROM t) AS _q1 WHERE b = %s AND CAST(c AS TEXT) LIKE 'x%%'"
    )
    assert translate("SELECT kind, count(*) FROM sites GROUP BY ALL") == "SELECT kind, COUNT(*) FROM sites GROUP BY 1"
