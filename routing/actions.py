"""Operator actions on a site: pin, unpin, rollback, promote. Each writes through the store
and leaves an audit row; the proxy applies them at once (its admin API calls these, then
reloads the site).

- `pin SITE upstream`: the upstream answers, whatever the scores say.
- `pin SITE local[@vN]`: the local model (version N, or the active one) answers.
- `unpin SITE`: back to automatic routing by state.
- `rollback SITE --to vN`: make an earlier, verified version the active one.
- `rollback SITE`: withdraw the active version; the upstream answers until a new one.
- `promote SITE vN`: make vN active and put the site in `local` now (manual promotion).
- `policy SITE JSON`: per-site overrides of the promotion policy, scoring, validator and prompt
  rendering (`{"promotion": {"min_samples": 50}, "scoring": {"creative_paths": ["walls"]},
  "validator": "myapp.checks:quiz", "prompt": "full"}`).
"""

from __future__ import annotations

import re

from understudy.routing.policy import Decision, SiteState, on_rollback
from understudy.routing.registry import apply_decision, audit, get_version, list_versions, set_version_status
from understudy.store import SiteRecord, Store

USABLE_STATUSES = ("ready", "active", "retired")  # verified versions; failed/rejected are never served
_PIN = re.compile(r"^(upstream|local)(?:@v(\d+))?$")


class ActionError(ValueError):
    pass


def pin(store: Store, site_ref: str, target: str) -> SiteRecord:
    site = store.resolve_site(site_ref)
    match = _PIN.match(target.strip())
    if not match or (match.group(1) == "upstream" and match.group(2)):
        raise ActionError(f"pin target must be upstream, local or local@vN, not {target!r}")
    if match.group(1) == "local":
        number = int(match.group(2)) if match.group(2) else site.active_version
        if number is None:
            raise ActionError(f"site {site.name} has no active version to pin; name one: local@vN")
        _usable_version(store, site, number)
    store.cursor().execute("UPDATE sites SET pinned = ? WHERE id = ?", [target.strip(), site.id])
    audit(store, site.id, "pin", {"target": target.strip(), "was": site.pinned}, "cli")
    return store.resolve_site(site.id)


def unpin(store: Store, site_ref: str) -> SiteRecord:
    site = store.resolve_site(site_ref)
    store.cursor().execute("UPDATE sites SET pinned = NULL WHERE id = ?", [site.id])
    audit(store, site.id, "unpin", {"was": site.pinned}, "cli")
    return store.resolve_site(site.id)


def rollback(store: Store, site_ref: str, to_version: int | None = None) -> SiteRecord:
    site = store.resolve_site(site_ref)
    if to_version is None:
        if site.active_version is not None:
            set_version_status(store, site.id, site.active_version, "retired")
        decision = on_rollback(site.state)
        store.cursor().execute("UPDATE sites SET state = ?, active_version = NULL, state_since = now() WHERE id = ?",
                               [decision.new_state.value, site.id])
        audit(store, site.id, "rollback", {"from_version": site.active_version, "to": "upstream",
                                           "reason": decision.reason}, "cli")
        return store.resolve_site(site.id)
    if to_version == site.active_version:
        raise ActionError(f"v{to_version} is already the active version of {site.name}")
    _usable_version(store, site, to_version)
    _activate(store, site, to_version)
    audit(store, site.id, "rollback", {"from_version": site.active_version, "to_version": to_version}, "cli")
    return store.resolve_site(site.id)


def promote(store: Store, site_ref: str, version: int) -> SiteRecord:
    site = store.resolve_site(site_ref)
    _usable_version(store, site, version)
    _activate(store, site, version)
    site = store.resolve_site(site.id)
    return apply_decision(store, site, Decision(SiteState.LOCAL, f"promoted by hand to v{version}"),
                          active_version=version, actor="cli")


def _activate(store: Store, site: SiteRecord, version: int) -> None:
    if site.active_version is not None and site.active_version != version:
        set_version_status(store, site.id, site.active_version, "retired")
    set_version_status(store, site.id, version, "active")
    state = site.state if site.state != SiteState.LEARNING.value else SiteState.SHADOW.value
    store.cursor().execute("UPDATE sites SET active_version = ?, state = ?, state_since = now() WHERE id = ?",
                           [version, state, site.id])


def _usable_version(store: Store, site: SiteRecord, number: int) -> None:
    version = get_version(store, site.id, number)
    if version is None:
        known = ", ".join(f"v{v.version}" for v in list_versions(store, site.id)) or "none"
        raise ActionError(f"site {site.name} has no v{number} (versions: {known})")
    if version.status not in USABLE_STATUSES:
        raise ActionError(f"v{number} of {site.name} is {version.status}: {version.note or 'never activated'}")



def set_policy(store: Store, site_ref: str, overrides: dict) -> SiteRecord:
    """Validate and store a site's routing overrides (unknown keys are refused, not ignored)."""
    from understudy.routing.policy import PromotionPolicy
    from understudy.routing.scoring import ScoringPolicy

    from understudy.validators import DISABLED, ValidatorError, load_validator

    site = store.resolve_site(site_ref)
    unknown = set(overrides) - {"promotion", "scoring", "validator", "prompt"}
    if unknown:
        raise ActionError(f"policy keys must be 'promotion', 'scoring', 'validator' and/or 'prompt', not {sorted(unknown)}")
    if overrides.get("prompt") not in (None, "compact", "full"):
        raise ActionError(f"prompt must be 'compact' or 'full' (the rendering the next version trains on), "
                          f"not {overrides['prompt']!r}")
    try:
        PromotionPolicy.from_dict(None, overrides.get("promotion"))
        ScoringPolicy.from_dict(None, overrides.get("scoring"))
        validator = overrides.get("validator")
        if validator is not None and not isinstance(validator, str):
            raise ValueError(f"validator must be a 'module:function' string or {DISABLED!r}, not {validator!r}")
        if validator not in (None, DISABLED):
            load_validator(validator)
    except (TypeError, ValueError, ValidatorError) as exc:
        raise ActionError(str(exc)) from None
    import json

    store.cursor().execute("UPDATE sites SET policy = ? WHERE id = ?", [json.dumps(overrides) if overrides else None, site.id])
    audit(store, site.id, "policy", {"overrides": overrides}, "cli")
    return store.resolve_site(site.id)


def run_action(store: Store, site_ref: str, request: dict) -> SiteRecord:
    """One action from its wire form: {"action": "pin", "target": ...} etc. (admin API and CLI)."""
    action = request.get("action")
    if action == "pin":
        return pin(store, site_ref, str(request.get("target", "")))
    if action == "unpin":
        return unpin(store, site_ref)
    if action == "rollback":
        return rollback(store, site_ref, request.get("to_version"))
    if action == "promote":
        return promote(store, site_ref, int(request["version"]))
    if action == "policy":
        return set_policy(store, site_ref, request.get("overrides") or {})
    raise ActionError(f"unknown action {action!r}")
