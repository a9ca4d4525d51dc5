"""Everything a running proxy holds, built once in `create_app` and kept in Litestar's app state."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.metrics import ProxyMetrics
from proxy.recorder import Recorder
from proxy.site_registry import SiteRegistry
from proxy.upstream import Upstream
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
