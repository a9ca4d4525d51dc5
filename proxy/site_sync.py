"""Seeing other processes' changes on a shared (PostgreSQL) store.

Each proxy process keeps its sites, their versions and their evidence in memory so the
request path never reads the database. When several processes share one store, one of them
(or the CLI) may pin a site, register a version, or move a site's state; the others learn
of it here: every `sync_interval_s` one query fingerprints every site (its record, policy,
versions, and how many shadow results its active version has), and each site whose
fingerprint changed is reloaded, evidence included when other processes added to it. So a
change made anywhere holds everywhere within one interval plus that query.

Decisions stay compare-and-set across processes (`routing.registry.apply_decision` writes
only if the site is still as the decision saw it), so two processes can never both move a site.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import anyio

from understudy.store import SiteRecord, Store

log = logging.getLogger("understudy.sync")

FINGERPRINT_SQL = """
SELECT s.id, s.name, s.name_source, s.state, s.pinned, s.active_version, s.policy,
       (SELECT string_agg(CAST(v.version AS VARCHAR) || ':' || v.status, ',' ORDER BY v.version)
          FROM model_versions v WHERE v.site_id = s.id) AS versions,
       (SELECT count(*) FROM shadow_results r WHERE r.site_id = s.id AND r.version = s.active_version) AS shadows
FROM sites s
"""


class Fingerprint(NamedTuple):
    """What FINGERPRINT_SQL reads of a site beside its record."""

    policy: Any
    versions: str | None
    shadows: int


class SiteSync:
    def __init__(
        self,
        store: Store,
        *,
        current_site: Callable[[str], SiteRecord | None],
        replace_site: Callable[[SiteRecord], None],
        refresh_routing: Callable[[str, bool], None],
    ):
        self.store = store
        self.current_site = current_site
        self.replace_site = replace_site
        self.refresh_routing = refresh_routing
        self._seen: dict[str, Fingerprint] = {}

    def prime(self) -> None:
        """Remember the store as this process loaded it, so the first tick reloads nothing."""
        for row in self.store.cursor().execute(FINGERPRINT_SQL).fetchall():
            self._seen[row[0]] = Fingerprint(*row[6:])

    def tick(self) -> None:
        """One pass (a worker thread): reload every site that changed since the last."""
        for row in self.store.cursor().execute(FINGERPRINT_SQL).fetchall():
            record, seen = SiteRecord(*row[:6]), Fingerprint(*row[6:])
            previous = self._seen.get(record.id)
            if self.current_site(record.id) == record and previous == seen:
                continue
            self._seen[record.id] = seen
            self.replace_site(record)
            # New evidence from other processes (more shadow rows): reload it from the store.
            self.refresh_routing(record.id, previous is None or previous.shadows != seen.shadows)

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await anyio.to_thread.run_sync(self.tick)
            except Exception:  # a lost connection or a busy server: try again next interval
                log.exception("site sync failed; retrying in %.1f s", interval_s)
