"""Everything a running proxy holds, built once in `create_app` and kept in Litestar's app state."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from understudy.client_keys import ClientKeys
from understudy.proxy.metrics import ProxyMetrics
from understudy.proxy.recorder import Recorder
from understudy.proxy.site_registry import SiteRegistry
from understudy.proxy.upstream import Upstream
from understudy.routing.router import Router
from understudy.settings import Settings
from understudy.store import Store


@dataclass
class ProxyState:
    settings: Settings
    store: Store
    recorder: Recorder
    sites: SiteRegistry
    upstream: Upstream
    metrics: ProxyMetrics
    admin_token: str
    router: Router
    background: set[asyncio.Task] = field(default_factory=set)  # shadow work, kept referenced until done
    client_keys: ClientKeys | None = None  # None: /v1/* is open (loopback without a keys file)
    stopping: list = field(default_factory=list)  # called first on shutdown (the sync loop's cancel)

    def refresh_site(self, site_id: str) -> None:
        """After a registry change (new version, pin, rollback ...): reload the site everywhere."""
        self.sites.replace(self.store.resolve_site(site_id))
        self.router.refresh(site_id)

    def spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
