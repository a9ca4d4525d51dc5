"""One writer: every write reaches DuckDB through the recorder's thread; a policy decision is a
compare-and-set on the state it was computed from, so an operator's action made meanwhile wins;
the writer survives rows the store refuses (counted, spilled) and the next start replays them."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
import pytest

from tests.conftest import open_test_store, query_store, start_proxy
from tests.support.rows import site_row, training_result
from understudy.pricing import PriceTable
from understudy.proxy.call_record import PendingCall
from understudy.proxy.callsite import identify
from understudy.proxy.recorder import Recorder
from understudy.routing.actions import pin
from understudy.routing.policy import Decision, SiteState
from understudy.routing.registry import StaleDecision, apply_decision, register_version
from understudy.store import Store

STORE_BACKENDS = ("duckdb", "postgresql")  # the single writer and its compare-and-set on both stores

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def _call(call_id: str, text: str = "hi", usage: dict | None = None) -> PendingCall:
    completion = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": usage or {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    return PendingCall(
        id=call_id,
        ts=time.time(),
        identification=identify(BODY),
        request=BODY,
        served_by="upstream",
        stream=False,
        status=200,
        latency_ms=1.0,
        response_body=json.dumps(completion).encode(),
    )


@pytest.fixture
def store(tmp_path):
    store = open_test_store(tmp_path / "u.duckdb")
    yield store
    store.close()


def test_the_writer_survives_a_row_the_store_refuses_and_the_next_start_replays_the_spill(store, tmp_path):
    spill = tmp_path / "failed-writes.jsonl"
    recorder = Recorder(store, PriceTable.load(None), failed_path=spill, flush_ms=200)
    recorder.start()
    recorder.record(_call("call-a"))
    assert recorder.flush()
    # One batch: a duplicate of call-a (the store refuses it: primary key), a good call, and a
    # call whose upstream sent absurd usage (stored, its tokens estimated instead).
    recorder.record(_call("call-a", "again"))
    recorder.record(_call("call-b"))
    recorder.record(_call("call-c", usage={"prompt_tokens": 2**70, "completion_tokens": "many"}))
    assert recorder.flush()
    recorder.record(_call("call-d"))  # the writer is still alive
    assert recorder.flush()
    assert recorder.run(lambda s: s.call_count()) == 4
    recorder.close()
    rows = {
        r[0]: r[1:] for r in store.cursor().execute("SELECT id, prompt_tokens, usage_estimated FROM calls").fetchall()
    }
    assert rows["call-a"] == rows["call-b"] == rows["call-d"] == (3, False)
    # the absurd counts are dropped: the proxy's own estimate stands in, marked as one
    assert rows["call-c"][1] is True and 0 < rows["call-c"][0] < 100
    assert recorder.failed == 1 and recorder.recorded == 4
    [spilled] = [json.loads(line) for line in spill.read_text().splitlines()]
    assert spilled["kind"] == "call" and spilled["row"][0] == "call-a"

    # The next start: a row the store now accepts is stored, the one it still refuses is kept.
    good = json.loads(json.dumps(spilled))
    good["row"][0] = "call-e"
    spill.write_text(spill.read_text() + json.dumps(good) + "\n" + "not json\n")
    again = Recorder(store, PriceTable.load(None), failed_path=spill)
    assert again.replay_spilled() == 1 and again.replayed == 1
    assert store.cursor().execute("SELECT count(*) FROM calls WHERE id = 'call-e'").fetchone()[0] == 1
    kept = spill.read_text().splitlines()
    assert len(kept) == 2 and json.loads(kept[0])["row"][0] == "call-a" and kept[1] == "not json"


def test_a_failing_spill_does_not_stop_the_writer(store, tmp_path):
    recorder = Recorder(store, PriceTable.load(None), failed_path=tmp_path / "no-such-dir" / "failed.jsonl")
    recorder.start()
    recorder.record(_call("x"))
    recorder.record(_call("x", "duplicate"))  # refused, and its spill cannot be written either
    assert recorder.flush()
    recorder.record(_call("y"))
    assert recorder.flush()
    assert recorder.spill_failures == 1 and recorder.run(lambda s: s.call_count()) == 2
    recorder.close()


def test_jobs_run_on_the_writer_in_queue_order(store):
    recorder = Recorder(store, PriceTable.load(None), flush_ms=500)
    recorder.start()
    recorder.record(_call("first"))
    # queued after the call: the job sees it although the batch window has not closed
    assert recorder.run(lambda s: s.cursor().execute("SELECT id FROM calls").fetchall()) == [("first",)]
    threads = {recorder.run(lambda s: threading.current_thread().name) for _ in range(3)}
    assert threads == {"understudy-recorder"}
    with pytest.raises(ZeroDivisionError):
        recorder.run(lambda s: 1 / 0)  # the caller gets the job's exception, the writer carries on
    recorder.record(_call("second"))
    assert recorder.flush() and store.call_count() == 2
    recorder.close()


def _site_in_shadow(store: Store):
    store.write_batch([site_row("s1", "site", header="site", arg_names=[], schema_name="Level")])
    register_version(store, "s1", training_result())
    return store.resolve_site("s1")


def test_a_decision_computed_before_an_operator_pin_is_dropped(store):
    decided_from = _site_in_shadow(store)
    assert decided_from.state == "shadow"
    promote = Decision(SiteState.LOCAL, "non-inferior to the teacher")
    pin(store, "s1", "upstream")  # the operator acts after the decision was computed
    with pytest.raises(StaleDecision) as stale:
        apply_decision(store, decided_from, promote, actor="policy", expected=decided_from)
    assert stale.value.current.pinned == "upstream"
    site = store.resolve_site("s1")
    assert site.state == "shadow" and site.pinned == "upstream"
    assert (
        store.cursor()
        .execute("SELECT count(*) FROM audit WHERE action = 'state' AND detail LIKE '%non-inferior%'")
        .fetchone()[0]
        == 0
    )


def test_a_decision_on_an_unchanged_site_applies(store):
    """The control: nothing changed since the decision was computed, so it is written."""
    decided_from = _site_in_shadow(store)
    updated = apply_decision(
        store, decided_from, Decision(SiteState.LOCAL, "non-inferior"), actor="policy", expected=decided_from
    )
    assert updated.state == "local" and store.resolve_site("s1").state == "local"


def test_operator_actions_and_recording_at_once_all_land(fake_upstream, isolated_data_dir):
    """Policy changes from many admin requests while calls are recorded: every action is applied
    and audited, every call stored, none answered with a 5xx (one writer, no conflicts)."""
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        site = httpx.post(proxy.url + "/v1/chat/completions", json=BODY, timeout=30).headers["x-understudy-site"]
        headers = {"authorization": f"Bearer {proxy.admin_token}"}

        def act(i: int) -> int:
            body = {"action": "policy", "overrides": {"promotion": {"min_samples": 21 + i}}}  # each one a change
            return httpx.post(
                f"{proxy.url}/admin/sites/{site}/action", json=body, headers=headers, timeout=60
            ).status_code

        def call(i: int) -> int:
            return httpx.post(proxy.url + "/v1/chat/completions", json=BODY, timeout=60).status_code

        with ThreadPoolExecutor(16) as pool:
            actions = pool.map(act, range(40))
            calls = pool.map(call, range(120))
            statuses = list(actions), list(calls)
        assert statuses == ([200] * 40, [200] * 120)
    finally:
        proxy.stop()
    assert query_store(isolated_data_dir, "SELECT count(*) FROM calls") == [(121,)]
    assert query_store(isolated_data_dir, "SELECT count(*) FROM audit WHERE action = 'policy'") == [(40,)]


def test_the_proxy_replays_spilled_rows_on_start(fake_upstream, isolated_data_dir):
    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        for _ in range(3):
            httpx.post(proxy.url + "/v1/chat/completions", json=BODY, timeout=30)
    finally:
        proxy.stop()
    # As if the store had refused the newest call (a full disk, say): its row only in the spill file.
    from understudy.store import CALL_COLUMNS

    store = open_test_store(isolated_data_dir / "understudy.duckdb")
    row = store.cursor().execute(f"SELECT {', '.join(CALL_COLUMNS)} FROM calls ORDER BY ts DESC LIMIT 1").fetchone()
    store.cursor().execute("DELETE FROM calls WHERE id = ?", [row[0]])
    store.close()
    spill = isolated_data_dir / "failed-writes.jsonl"
    values = [v.isoformat() if isinstance(v, datetime) else v for v in row]
    spill.write_text(json.dumps({"kind": "call", "row": values}) + "\n")

    proxy = start_proxy(isolated_data_dir, fake_upstream.url)
    try:
        metrics = httpx.get(proxy.url + "/metrics").text
        assert "understudy_recorder_replayed_rows_total 1.0" in metrics
    finally:
        proxy.stop()
    assert not spill.exists()
    assert query_store(isolated_data_dir, "SELECT count(*) FROM calls WHERE id = ?", [row[0]]) == [(1,)]
