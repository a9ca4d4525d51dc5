"""`understudy score`: one (upstream, local) pair scored exactly as shadow mode scores it.

The request identifies its call site (as the proxy would); the site's scoring policy,
validator (bound to the request's arguments) and decoys (its recent upstream answers to other
requests, for the chance correction) come from the store when the site is there, else the
defaults for the request's response type apply and there are no decoys. A running proxy
answers from its own router (admin API), so the figures match what it records.
"""

from __future__ import annotations

from typing import Any

from understudy.proxy.callsite import identify
from understudy.routing.router import Router
from understudy.settings import Settings
from understudy.store import SiteNotFound, Store
from understudy.validators import ValidatorRegistry


def offline_router(store: Store | None, settings: Settings) -> Router:
    """A router that scores but never serves, decides or records (no local model, no callbacks)."""

    def ignore(_: Any) -> None:
        return None

    return Router(
        store,
        None,
        validators=ValidatorRegistry(settings.validators),
        policy_defaults=settings.routing_policy,
        current_site=lambda _site_id: None,
        on_site_change=ignore,
        record_shadow=ignore,
        record_self_agreement=ignore,
    )


def score_request(
    router: Router, store: Store | None, request: dict[str, Any], upstream_text: str, local_text: str
) -> dict[str, Any]:
    ident = identify(request)
    site_id = ident.site_id
    if store is not None and ident.signature.tag:
        site_id = store.site_tags().get(ident.signature.tag, site_id)
    known = False
    if store is not None:
        try:
            store.resolve_site(site_id)
            known = True
        except SiteNotFound:
            pass
    if router.config(site_id) is None:
        if known:
            router.refresh(site_id)
        else:
            router.add_site(site_id, ident.signature.schema_name)
    result = router.score(site_id, request, ident.conversation, upstream_text, local_text)
    return {
        "score": result.score,
        "local_valid": result.local_valid,
        "components": result.components,
        "_site": site_id,
        "_known_site": known,
    }
