"""`create_app(settings)`: the proxy as a Litestar application.

The factory builds every long-lived part once (store, recorder thread, site registry,
pooled upstream client, metrics) and keeps them in `app.state.proxy`; nothing lives
in module globals, so a test can run several proxies side by side.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets

from litestar import Litestar, Request, Response, get
from litestar import Router as RouteGroup
from litestar.openapi import OpenAPIConfig

from understudy.client_keys import access_for
from understudy.inference.local_model import LocalModels
from understudy.inference.model_server import ServedModels
from understudy.pricing import PriceTable
from understudy.proxy.access import require_client_key
from understudy.proxy.admin import admin_router, public_report
from understudy.proxy.api_docs import render_plugins
from understudy.proxy.call_record import mask_text
from understudy.proxy.chat import chat_completions
from understudy.proxy.errors import EXCEPTION_HANDLERS, error_response
from understudy.proxy.metrics import ProxyMetrics
from understudy.proxy.recorder import Recorder
from understudy.proxy.review import review_routes
from understudy.proxy.site_registry import CONVERSATION_MEMORY, OVERFLOW_KIND, SiteRegistry
from understudy.proxy.site_sync import SiteSync
from understudy.proxy.state import ProxyState
from understudy.proxy.upstream import Upstream, UpstreamError
from understudy.proxy.upstreams import UpstreamTable, local_server_config
from understudy.routing.router import Router
from understudy.routing.similarity import cosine_similarity
from understudy.settings import Settings
from understudy.store import Store
from understudy.training.jobs import register_pending_results
from understudy.validators import ValidatorRegistry


@get("/healthz", tags=["Operations"], summary="Liveness and recorder backlog")
async def healthz(request: Request) -> dict:
    proxy: ProxyState = request.app.state.proxy
    return {
        "status": "ok",
        "pid": os.getpid(),
        "sites": len(proxy.sites.all()),
        "recorder_queue": proxy.recorder.pending(),
        "shadow_pending": proxy.router.background,
    }


@get("/metrics", tags=["Operations"], summary="Prometheus metrics", media_type="text/plain; version=0.0.4")
async def metrics(request: Request) -> Response[bytes]:
    proxy: ProxyState = request.app.state.proxy
    return Response(proxy.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@get("/v1/models", tags=["OpenAI-compatible"], summary="List models (the upstream's list, passed through)")
async def list_models(request: Request) -> Response[bytes]:
    proxy: ProxyState = request.app.state.proxy
    try:
        upstream = await proxy.upstream.get_models(dict(request.headers))
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type", "application/json"),
        )
    except UpstreamError as exc:
        return error_response(502, f"upstream unreachable: {exc}", type="upstream_error", code="upstream_unreachable")


def _local_models(settings: Settings) -> LocalModels | ServedModels | None:
    """Who answers locally: a model server when the configuration has a [local_server], else the
    base GGUF loaded in this process (lazily, on the first local answer)."""
    if not settings.local_models:
        return None
    served = local_server_config(settings.config, settings.data_dir)
    if served is not None:
        return ServedModels(served)
    return LocalModels(settings.resolved_base_gguf(), n_threads=settings.local_threads)


def build_state(settings: Settings) -> ProxyState:
    settings.ensure_data_dir()
    client_keys = access_for(settings)  # refuses a non-loopback bind without keys (ClientKeysError)
    table = UpstreamTable.from_config(
        settings.config, settings.data_dir, settings.upstream_url, settings.upstream_key, settings.upstream_free
    )
    store = Store.open(settings)
    admin_token = settings.admin_token or secrets.token_urlsafe(24)
    # Every key the proxy could send, and its admin token: masked wherever they might appear in a
    # recorded body or an error (client keys are masked by their shape: only their hashes are known).
    keys = {settings.resolved_upstream_key(), admin_token} | {route.key() for route in table.routes}
    recorder = Recorder(
        store,
        PriceTable.load(settings.prices_file),
        batch_rows=settings.recorder_batch_rows,
        flush_ms=settings.recorder_flush_ms,
        secrets=tuple(sorted(k for k in keys if k)),
        failed_path=settings.data_dir / "failed-writes.jsonl",
    )
    recorder.replay_spilled()  # rows an earlier run could not store, before anything new
    sites = SiteRegistry(
        store.site_records(),
        store.site_tags(),
        store.recent_conversations(CONVERSATION_MEMORY),
        max_generic_sites=settings.max_generic_sites,
        generic_sites=store.site_count("generic"),
        overflow_sites=store.site_count(OVERFLOW_KIND),
        mask=lambda text: mask_text(text, recorder.secrets),
    )
    local = _local_models(settings)
    router = Router(
        store,
        local,
        validators=ValidatorRegistry(settings.validators),
        policy_defaults=settings.routing_policy,
        sampling_defaults=settings.sampling_policy,
        current_site=sites.get,
        on_site_change=sites.replace,
        record_shadow=recorder.add_shadow_result,
        record_self_agreement=recorder.add_self_agreement,
        similarity=cosine_similarity,
        max_extra_upstream=settings.extra_upstream_concurrency,
        write=recorder.run,
    )
    recorder.on_upstream_answer = router.remember_answer
    state = ProxyState(
        settings=settings,
        store=store,
        recorder=recorder,
        sites=sites,
        upstream=Upstream(settings, table, strip_client_auth=client_keys is not None),
        metrics=ProxyMetrics(recorder, top_sites=settings.metrics_top_sites, routing=router.routing_states),
        admin_token=admin_token,
        router=router,
        client_keys=client_keys,
    )
    for version in register_pending_results(store, settings):  # results a worker left while we were down
        state.refresh_site(version["site_id"])
    router.load()
    return state


def create_app(settings: Settings) -> Litestar:
    # httpx (the model server's client, the upstream check) logs every request at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    state = build_state(settings)

    async def start(app: Litestar) -> None:
        state.recorder.start()
        if settings.shared_store:  # other processes write this store too: pick up their changes
            sync = SiteSync(
                state.store,
                current_site=state.sites.get,
                replace_site=state.sites.replace,
                refresh_routing=state.router.refresh,
            )
            sync.prime()
            sync_task = asyncio.get_running_loop().create_task(sync.run(settings.sync_interval_s))
            state.stopping.append(sync_task.cancel)

    async def stop(app: Litestar) -> None:
        for cancel in state.stopping:
            cancel()
        if state.router.local is not None:
            state.router.local.queue.drop_background()  # queued shadow samples are not owed to anyone
        for task in list(state.background):  # shadow scoring in flight: let it finish and be recorded
            await asyncio.wait([task], timeout=30)
        await state.upstream.aclose()
        state.recorder.close()  # drains the queue: a clean shutdown loses nothing
        if state.router.local is not None:
            state.router.local.close()
        state.store.close()

    app = Litestar(
        route_handlers=[
            RouteGroup(path="/", route_handlers=[chat_completions, list_models], guards=[require_client_key]),
            healthz,
            metrics,
            public_report,
            admin_router,
            *review_routes,
        ],
        on_startup=[start],
        on_shutdown=[stop],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        # /schema is a self-contained page (no CDN script: blank offline otherwise), /schema/openapi.json the document
        openapi_config=OpenAPIConfig(
            title="Understudy", version="0.1.0", path="/schema", render_plugins=render_plugins()
        ),
    )
    app.state.proxy = state
    return app
