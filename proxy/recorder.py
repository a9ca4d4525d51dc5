"""The single writer: every recorded call reaches DuckDB through this one thread.

The request path calls `record()`, which only puts an object on a queue. The writer
thread takes whatever has queued up (at most `batch_rows`, waiting at most `flush_ms`
for more), builds the rows and commits them in one transaction: a group commit, so
the disk cost is paid per batch, not per request. `flush()` waits until everything
queued before it is committed (the admin API uses it so reads see recent calls);
`close()` drains the queue and commits before returning, which is what makes a clean
shutdown lose nothing. A batch the database refuses is appended to
`failed-writes.jsonl` in the data directory rather than dropped.
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
from pathlib import Path

from understudy.proxy.call_record import PendingCall, completion_of, first_content, to_row
from understudy.proxy.pricing import PriceTable
from understudy.store import Store

log = logging.getLogger("understudy.recorder")
_STOP = object()
_RETRY_MEMORY = 10_000  # conversations remembered for linking retries to the call they correct


class Recorder:
    def __init__(self, store: Store, prices: PriceTable, *, batch_rows: int = 500, flush_ms: int = 50,
                 secrets: tuple[str, ...] = (), failed_path: Path | None = None):
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
        self.recorded = 0
        self.batches = 0
        self.failed = 0
        # Called (site id, conversation, answer text) for each recorded upstream answer, on this
        # thread: the router keeps recent answers as decoys for its chance correction.
        self.on_upstream_answer = None

    def start(self) -> None:
        self._thread.start()

    def record(self, call: PendingCall) -> None:
        self._queue.put(call)

    def add_site(self, row: tuple) -> None:
        self._queue.put(("site", row))

    def rename_site(self, update: tuple[str, str, str]) -> None:
        self._queue.put(("name", update))

    def add_shadow_result(self, row: tuple) -> None:
        self._queue.put(("shadow", row))

    def add_self_agreement(self, row: tuple) -> None:
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

    def _run(self) -> None:
        stopping = False
        while not stopping:
            items = [self._queue.get()]
            deadline = time.monotonic() + self.flush_s
            while len(items) < self.batch_rows:
                remaining = deadline - time.monotonic()
                try:
                    items.append(self._queue.get(timeout=max(remaining, 0)) if remaining > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = any(item is _STOP for item in items)
            self._commit([i for i in items if not isinstance(i, threading.Event) and i is not _STOP])
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()

    def _commit(self, items: list) -> None:
        if not items:
            return
        sites, names, rows = [], [], []
        results: dict[str, list[tuple]] = {"shadow": [], "self_agreement": []}
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
                    rows.append(to_row(item, item.id, self._retry_of(item, item.id), self.prices, self.secrets,
                                       completion))
                except Exception:  # a row we cannot build must not take the batch down
                    log.exception("could not build a row for call %s", item.id)
                    continue
                if self.on_upstream_answer is not None and item.served_by == "upstream" and item.status == 200:
                    self._notify(item, completion)
        try:
            self.store.write_batch(sites, rows, results["shadow"], results["self_agreement"])
            for site_id, name, source in names:
                if source == "claim":
                    self.store.claim_site(site_id, name)
                elif source == "tag":
                    self.store.tag_site(site_id, name)
                else:
                    self.store.set_site_name(site_id, name, source)
            self.recorded += len(rows)
            self.batches += 1
        except Exception:
            log.exception("group commit of %d calls failed; appending them to failed-writes.jsonl", len(rows))
            self.failed += len(rows)
            self._spill(sites, rows)

    def _notify(self, call: PendingCall, completion: dict | None) -> None:
        text = first_content(completion)
        if isinstance(text, str) and text:
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

    def _spill(self, sites: list[tuple], rows: list[tuple]) -> None:
        if self.failed_path is None:
            return
        with open(self.failed_path, "a", encoding="utf-8") as handle:
            for kind, batch in (("site", sites), ("call", rows)):
                for row in batch:
                    handle.write(json.dumps({"kind": kind, "row": row}, default=str) + "\n")
