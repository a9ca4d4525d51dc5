"""A router over a real store with no proxy around it and no local model, for tests that drive its
scoring and decisions directly (`observe_pair`, `observe_second_opinion`, `review_changed`)."""

from __future__ import annotations

from typing import Any

from understudy.routing.router import Router
from understudy.store import Store
from understudy.validators import ValidatorRegistry


def router_over(store: Store, *, recording: bool = False, **options: Any) -> Router:
    """The router as the proxy builds it, minus the proxy: sites are read from `store` and changes
    are dropped (the store holds them). `recording`: scored rows are written to the store at once,
    as the proxy's recorder writes them; else they are dropped. `options` replace any argument
    (`current_site`, `on_site_change`, `max_extra_upstream` ...). Not loaded: call `load()`."""
    arguments: dict[str, Any] = {
        "validators": ValidatorRegistry(),
        "current_site": store.resolve_site,
        "on_site_change": lambda record: None,
        "record_shadow": (lambda row: store.write_batch(shadows=[row])) if recording else (lambda row: None),
        "record_self_agreement": (
            (lambda row: store.write_batch(self_agreement=[row])) if recording else (lambda row: None)
        ),
    }
    return Router(store, None, **{**arguments, **options})
