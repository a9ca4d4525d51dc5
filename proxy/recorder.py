"""The single writer: every recorded call reaches DuckDB through this one thread.

The request path calls `record()`, which only puts an object on a queue. The writer
thread wakes for the first item, sleeps `flush_ms`, takes whatever has queued up by then (at
most `batch_rows`), builds the rows and commits them in one transaction: a group commit, so
the disk cost is paid per batch, not per request. `flush()` waits until everything
queued before it is committed (the admin API uses it so reads see recent calls);
`close()` drains the queue and commits before returning, which is what makes a clean
shutdown lose nothing. The thread keeps the normal CPU policy: under SCHED_IDLE it starved on a
busy host and, holding the GIL while descheduled, stalled the request handlers too
(docs/benchmarks.md).

It is the store's only writer: other writes (site state, audit, versions, names, reviews) are
jobs run on this thread in queue order (`run`). It never dies: a batch the database refuses is
stored row by row, and only the rows it still refuses are appended to `failed-writes.jsonl` in
the data directory (counted in /metrics); the next start replays that file
(`replay_spilled`), keeping only what is still refused.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from understudy.pricing import PriceTable
from understudy.proxy.call_record import PendingCall, completion_of, first_content, to_row
from understudy.rows import CallRow, SelfAgreementRow, ShadowRow, SiteRow
from understudy.store import Store

log = logging.getLogger("understudy.recorder")
_STOP = object()
T = TypeVar("T")
_RETRY_MEMORY = 10_000  # conversations remembered for linking retries to the call they correct


class Recorder:
    def __init__(
        self,
        store: Store,
        prices: PriceTable,
        *,
        batch_rows: int = 500,
        flush_ms: int = 50,
        secrets: tuple[str, ...] = (),
        failed_path: Path | None = None,
    ):
        self.store = store
        self.prices = prices
        self.batch_rows = batch_rows
        self.flush_s = flush_ms / 1000
        self.secrets = tuple(s for s in secrets if s)
        self.failed_path = failed_path
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._last_call_of_conversation: OrderedDict[str, str] = OrderedDict()
        # Call ids: start time + random bits + a counter. Unique across restarts and
        # processes, sortable, and free of a syscall per call (uuid4 reads urandom).
        self._id_prefix = f"{int(time.time() * 1000):011x}{os.urandom(3).hex()}"
        self._id_counter = itertools.count()
        self._thread = threading.Thread(target=self._run, name="understudy-recorder", daemon=True)
        self._inline_lock = threading.Lock()
        self.recorded = 0
        self.batches = 0
        self.failed = 0  # calls the store refused (spilled) or that could not be turned into a row
        self.spill_failures = 0  # spills that could not be written either
        self.replayed = 0  # spilled rows stored on a later start
        # Called (site id, conversation, answer text) for each recorded upstream answer, on this
        # thread: the router keeps recent answers as decoys for its chance correction.
        self.on_upstream_answer: Callable[[str, str, str], None] | None = None

    def start(self) -> None:
        self._thread.start()

    def record(self, call: PendingCall) -> None:
        self._queue.put(call)

    def add_site(self, row: SiteRow) -> None:
        self._queue.put(("site", row))

    def rename_site(self, update: tuple[str, str, str]) -> None:
        self._queue.put(("name", update))

    def add_shadow_result(self, row: ShadowRow) -> None:
        self._queue.put(("shadow", row))

    def add_self_agreement(self, row: SelfAgreementRow) -> None:
        self._queue.put(("self_agreement", row))

    def new_call_id(self) -> str:
        """Unique, time-ordered, and cheap (no syscall): start time + random bits + a counter."""
        return f"{self._id_prefix}{next(self._id_counter):08x}"

    def pending(self) -> int:
        return self._queue.qsize()

    def flush(self, timeout: float = 10.0) -> bool:
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    # ---- the writer thread ----

    def run(self, job: Callable[[Store], T], timeout: float = 60.0) -> T:
        """Run `job(store)` on the writer thread, in order with the calls queued before it, and
        return its result (or raise its exception). Every write to the store that is not a
        recorded call goes through here (site state, audit, versions, names, reviews), so the
        store has one writer and a job sees everything queued before it. Before the writer
        starts and after it stops the job runs here, under the same lock."""
        if not self._thread.is_alive():
            with self._inline_lock:
                return job(self.store)
        future: Future = Future()
        self._queue.put(("job", job, future))
        return future.result(timeout)

    # ---- the writer thread ----

    def _run(self) -> None:
        stopping = False
        while not stopping:
            items = [self._queue.get()]
            # The rest of the window is slept, not spent blocked in `get`: a thread waiting in `get`
            # is woken by every `record()`, and each wake-up takes the GIL (and the core) from the
            # event loop in the middle of a request. Asleep, the writer wakes once per batch. A
            # backlog of a full batch or more is taken at once.
            if self._queue.qsize() + 1 < self.batch_rows:
                time.sleep(self.flush_s)
            while len(items) < self.batch_rows:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = any(item is _STOP for item in items)
            pending: list = []
            for item in items:
                if isinstance(item, threading.Event) or (isinstance(item, tuple) and item[0] == "job"):
                    self._commit_safely(pending)  # what was queued before a flush or a job comes first
                    pending = []
                    if isinstance(item, threading.Event):
                        item.set()
                    else:
                        self._run_job(*item[1:])
                elif item is not _STOP:
                    pending.append(item)
            self._commit_safely(pending)

    def _run_job(self, job: Callable[[Store], object], future: Future) -> None:
        try:
            future.set_result(job(self.store))
        except BaseException as exc:  # the caller gets it; the writer carries on
            future.set_exception(exc)

    def _commit_safely(self, items: list) -> None:
        """The writer survives anything: an unexpected failure is logged and counted, never fatal."""
        try:
            self._commit(items)
        except Exception:
            log.exception("the writer could not commit %d items", len(items))
            self.failed += sum(isinstance(item, PendingCall) for item in items)

    def _commit(self, items: list) -> None:
        if not items:
            return
        sites: list[SiteRow] = []
        names: list[tuple[str, str, str]] = []
        rows: list[CallRow] = []
        shadows: list[ShadowRow] = []
        agreements: list[SelfAgreementRow] = []
        results: dict[str, list] = {"shadow": shadows, "self_agreement": agreements}
        for item in items:
            if isinstance(item, tuple) and item[0] == "site":
                sites.append(item[1])
            elif isinstance(item, tuple) and item[0] == "name":
                names.append(item[1])
            elif isinstance(item, tuple) and item[0] in results:
                results[item[0]].append(item[1])
            else:
                try:
                    completion = completion_of(item)
                    rows.append(
                        to_row(item, item.id, self._retry_of(item, item.id), self.prices, self.secrets, completion)
                    )
                except Exception as exc:  # a row we cannot build must not take the batch down
                    log.exception("could not build a row for call %s", item.id)
                    self.failed += 1
                    self._spill(
                        [
                            (
                                "unbuildable",
                                {
                                    "call_id": item.id,
                                    "site_id": item.identification.site_id,
                                    "error": f"{type(exc).__name__}: {exc}",
                                },
                            )
                        ]
                    )
                    continue
                if self.on_upstream_answer is not None and item.served_by == "upstream" and item.status == 200:
                    self._notify(item, completion)
        try:
            self.store.write_batch(sites, rows, results["shadow"], results["self_agreement"])
            self.recorded += len(rows)
        except Exception:
            # One bad row must not cost the batch: store row by row, spill only what is refused.
            log.exception("group commit of %d calls failed; storing them one by one", len(rows))
            self._store_one_by_one(sites, rows, results["shadow"], results["self_agreement"])
        self.batches += 1
        for site_id, name, source in names:
            try:
                if source == "claim":
                    self.store.claim_site(site_id, name)
                elif source == "tag":
                    self.store.tag_site(site_id, name)
                else:
                    self.store.set_site_name(site_id, name, source)
            except Exception:
                log.exception("could not store the name %r of site %s", name, site_id)

    def _store_one_by_one(
        self,
        sites: list[SiteRow],
        rows: list[CallRow],
        shadows: list[ShadowRow],
        agreements: list[SelfAgreementRow],
    ) -> None:
        for kind, batch in (("site", sites), ("call", rows), ("shadow", shadows), ("self_agreement", agreements)):
            for row in batch:
                try:
                    self.store.write_batch(**_one_row(kind, row))
                    self.recorded += kind == "call"
                except Exception as exc:
                    log.warning("the store refused a %s row (%s: %s); spilled", kind, type(exc).__name__, exc)
                    self.failed += kind == "call"
                    self._spill([(kind, row)])

    def replay_spilled(self) -> int:
        """Store what earlier runs spilled (called at start-up, before the writer starts); rows the
        store still refuses stay in the file. Returns the number of rows stored now."""
        if self.failed_path is None or not self.failed_path.exists():
            return 0
        kept, stored = [], 0
        for line in self.failed_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                kind, row = entry["kind"], entry["row"]
            except (ValueError, KeyError, TypeError):
                kept.append(line)  # unreadable: kept for a person to look at, never dropped
                continue
            if kind not in _BATCH_ARGUMENT:
                kept.append(line)
                continue
            try:
                self.store.write_batch(**_one_row(kind, _restored(kind, row)))
                stored += 1
            except Exception:
                kept.append(line)
        if kept:
            tmp = self.failed_path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, self.failed_path)  # whole or not at all: a crash here keeps the old file
        else:
            self.failed_path.unlink()
        self.replayed += stored
        if stored:
            log.warning("replayed %d spilled rows from %s; %d still refused", stored, self.failed_path, len(kept))
        return stored

    def _notify(self, call: PendingCall, completion: dict | None) -> None:
        text = first_content(completion)
        if isinstance(text, str) and text and self.on_upstream_answer is not None:
            try:
                self.on_upstream_answer(call.identification.site_id, call.identification.conversation, text)
            except Exception:  # the hook is an observer: it must never cost a record
                log.exception("upstream-answer hook failed for call %s", call.id)

    def _retry_of(self, call: PendingCall, call_id: str) -> str | None:
        """A retry or tool step points at the previous call of its conversation."""
        key = call.identification.conversation
        previous = self._last_call_of_conversation.get(key) if call.identification.turn != "first" else None
        self._last_call_of_conversation[key] = call_id
        self._last_call_of_conversation.move_to_end(key)
        if len(self._last_call_of_conversation) > _RETRY_MEMORY:
            self._last_call_of_conversation.popitem(last=False)
        return previous

    def _spill(self, entries: list[tuple[str, object]]) -> None:
        """Append rows the store refused to failed-writes.jsonl; a spill that fails is counted, never fatal."""
        if self.failed_path is None:
            return
        try:
            with open(self.failed_path, "a", encoding="utf-8") as handle:
                for kind, row in entries:
                    handle.write(json.dumps({"kind": kind, "row": row}, default=_jsonable) + "\n")
        except Exception:
            self.spill_failures += 1
            log.exception("could not spill %d rows to %s", len(entries), self.failed_path)


_BATCH_ARGUMENT = {"site": "sites", "call": "calls", "shadow": "shadows", "self_agreement": "self_agreement"}


def _one_row(kind: str, row: tuple) -> dict[str, Any]:
    """`Store.write_batch` arguments that store one row of `kind`."""
    return {_BATCH_ARGUMENT[kind]: [row]}


_ROW_TYPE: dict[str, type[SiteRow] | type[CallRow] | type[ShadowRow] | type[SelfAgreementRow]] = {
    "site": SiteRow,
    "call": CallRow,
    "shadow": ShadowRow,
    "self_agreement": SelfAgreementRow,
}
# Where each spilled row kind keeps its timestamp (JSON holds it as ISO text).
_TIMESTAMP_FIELD = {"site": "created_at", "call": "ts", "shadow": "ts", "self_agreement": "ts"}


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _restored(kind: str, row: list) -> SiteRow | CallRow | ShadowRow | SelfAgreementRow:
    """A spilled row as its typed row again (one an older release spilled, with fewer columns,
    gets the defaults of the columns added since)."""
    row_type = _ROW_TYPE[kind]
    values = list(row)
    at = row_type._fields.index(_TIMESTAMP_FIELD[kind])
    if isinstance(values[at], str):
        values[at] = datetime.fromisoformat(values[at])
    return row_type(*values)
