"""Operator actions on a site: pin, unpin, rollback, promote. Each writes through the store
and leaves an audit row; the proxy applies them at once (its admin API calls these, then
reloads the site).

- `pin SITE upstream`: the upstream answers, whatever the scores say.
- `pin SITE local[@vN]`: the local model (version N, or the active one) answers.
- `unpin SITE`: back to automatic routing by state.
- `rollback SITE --to vN`: make an earlier, verified version the active one; or the active one
  again, when the policy sent it back to learning (rejected or inconclusive): it shadows anew.
- `rollback SITE`: withdraw the active version; the upstream answers until a new one.
- `promote SITE vN`: make vN active and put the site in `local` now (manual promotion).
- `policy SITE JSON`: per-site overrides of the promotion policy, scoring, validator and prompt
  rendering (`{"promotion": {"min_samples": 50}, "scoring": {"creative_paths": ["walls"]},
  "validator": "myapp.checks:quiz", "prompt": "full"}`), merged into the site's current ones as
  a JSON merge patch (RFC 7386: objects merge key by key, `null` removes a key); with
  `replace` they replace them (`{}` then clears).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Any

from understudy.routing.policy import Decision, SiteState, on_rollback
from understudy.routing.registry import (
    USABLE_STATUSES,
    apply_decision,
    audit,
    get_version,
    list_versions,
    set_version_status,
)
from understudy.store import SiteRecord, Store

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
    if site.pinned == target.strip():
        raise ActionError(f"site {site.name} is already pinned to {site.pinned}: nothing changed")
    store.cursor().execute("UPDATE sites SET pinned = ? WHERE id = ?", [target.strip(), site.id])
    audit(store, site.id, "pin", {"target": target.strip(), "was": site.pinned}, "cli")
    return store.resolve_site(site.id)


def unpin(store: Store, site_ref: str) -> SiteRecord:
    site = store.resolve_site(site_ref)
    if site.pinned is None:
        raise ActionError(f"site {site.name} is not pinned: nothing to unpin (it is routed by its state, {site.state})")
    store.cursor().execute("UPDATE sites SET pinned = NULL WHERE id = ?", [site.id])
    audit(store, site.id, "unpin", {"was": site.pinned}, "cli")
    return store.resolve_site(site.id)


def rollback(store: Store, site_ref: str, to_version: int | None = None) -> SiteRecord:
    site = store.resolve_site(site_ref)
    if to_version is None:
        if site.active_version is None:
            known = ", ".join(f"v{v.version} {v.status}" for v in list_versions(store, site.id))
            raise ActionError(
                f"site {site.name} has no active version to roll back: the upstream already answers it"
                + (
                    f" (versions: {known}; `rollback {site.name} --to vN` activates one)"
                    if known
                    else " (it has never had a version)"
                )
            )
        set_version_status(store, site.id, site.active_version, "retired")
        decision = on_rollback(site.state)
        store.cursor().execute(
            "UPDATE sites SET state = ?, active_version = NULL, state_since = now() WHERE id = ?",
            [decision.new_state.value, site.id],
        )
        audit(
            store,
            site.id,
            "rollback",
            {"from_version": site.active_version, "to": "upstream", "reason": decision.reason},
            "cli",
        )
        return store.resolve_site(site.id)
    if to_version == site.active_version:
        if site.state != SiteState.LEARNING.value:
            raise ActionError(f"v{to_version} is already the active version of {site.name} ({site.state})")
        return _shadow_again(store, site, to_version)
    _usable_version(store, site, to_version)
    _activate(store, site, to_version)
    audit(store, site.id, "rollback", {"from_version": site.active_version, "to_version": to_version}, "cli")
    return store.resolve_site(site.id)


def _shadow_again(store: Store, site: SiteRecord, version: int) -> SiteRecord:
    """The active version the policy sent back to learning (rejected, or retired inconclusive)
    shadows again, judged on fresh evidence: after a change of policy, say, an operator may want
    it judged anew. Its earlier verdict no longer calls for a new version (training.jobs)."""
    _usable_version(store, site, version)
    set_version_status(store, site.id, version, "active")
    audit(store, site.id, "rollback", {"from_version": version, "to_version": version, "again": True}, "cli")
    return apply_decision(
        store,
        site,
        Decision(SiteState.SHADOW, f"shadowed again by hand: v{version} is judged on fresh evidence"),
        actor="cli",
    )


def promote(store: Store, site_ref: str, version: int) -> SiteRecord:
    site = store.resolve_site(site_ref)
    _usable_version(store, site, version)
    _activate(store, site, version)
    site = store.resolve_site(site.id)
    return apply_decision(
        store, site, Decision(SiteState.LOCAL, f"promoted by hand to v{version}"), active_version=version, actor="cli"
    )


def _activate(store: Store, site: SiteRecord, version: int) -> None:
    if site.active_version is not None and site.active_version != version:
        set_version_status(store, site.id, site.active_version, "retired")
    set_version_status(store, site.id, version, "active")
    # a partial site's threshold was the old version's: the new one shadows to earn its own
    state = (
        site.state if site.state not in (SiteState.LEARNING.value, SiteState.PARTIAL.value) else SiteState.SHADOW.value
    )
    store.cursor().execute(
        "UPDATE sites SET active_version = ?, state = ?, state_since = now() WHERE id = ?", [version, state, site.id]
    )


def _usable_version(store: Store, site: SiteRecord, number: int) -> None:
    version = get_version(store, site.id, number)
    if version is None:
        known = ", ".join(f"v{v.version}" for v in list_versions(store, site.id)) or "none"
        raise ActionError(f"site {site.name} has no v{number} (versions: {known})")
    if version.status not in USABLE_STATUSES:
        raise ActionError(f"v{number} of {site.name} is {version.status}: {version.note or 'never activated'}")


POLICY_KEYS = ("promotion", "scoring", "sampling", "validator", "prompt")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, `null` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def set_policy(store: Store, site_ref: str, patch: dict, *, replace: bool = False) -> SiteRecord:
    """Merge `patch` into the site's routing overrides (or replace them), validate the result and
    store it; unknown keys and wrong types are refused, not ignored, and nothing is written then."""
    site = store.resolve_site(site_ref)
    if not isinstance(patch, dict):
        raise ActionError("policy overrides must be a JSON object")
    before = store.site_policy(site.id)
    overrides = {k: v for k, v in patch.items() if v is not None} if replace else merge_patch(before, patch)
    overrides = {k: v for k, v in overrides.items() if v != {}}  # an emptied section is no override
    validate_policy(overrides)
    if overrides == before:
        return site  # nothing changed: nothing written, nothing audited
    store.cursor().execute(
        "UPDATE sites SET policy = ? WHERE id = ?", [json.dumps(overrides) if overrides else None, site.id]
    )
    audit(store, site.id, "policy", {"overrides": overrides, "was": before, "patch": patch, "replace": replace}, "cli")
    return store.resolve_site(site.id)


def validate_policy(overrides: dict) -> None:
    """ActionError naming the first problem of a site's overrides (the rules `set_policy` applies)."""
    from understudy.inference.checked_sampling import SamplingPolicy
    from understudy.routing.policy import PromotionPolicy
    from understudy.routing.scoring import ScoringPolicy
    from understudy.validators import DISABLED, ValidatorError, load_validator

    unknown = set(overrides) - set(POLICY_KEYS)
    if unknown:
        raise ActionError(
            f"policy keys must be 'promotion', 'scoring', 'sampling', 'validator' and/or 'prompt', "
            f"not {sorted(unknown)}"
        )
    for section in ("promotion", "scoring", "sampling"):
        if section in overrides and not isinstance(overrides[section], dict):
            raise ActionError(f"{section} must be a JSON object of settings, not {overrides[section]!r}")
    if overrides.get("prompt") not in (None, "compact", "full"):
        raise ActionError(
            f"prompt must be 'compact' or 'full' (the rendering the next version trains on), "
            f"not {overrides['prompt']!r}"
        )
    try:
        PromotionPolicy.from_dict(None, overrides.get("promotion"))
        ScoringPolicy.from_dict(None, overrides.get("scoring"))
        SamplingPolicy.from_dict(None, overrides.get("sampling"))
        validator = overrides.get("validator")
        if validator is not None and not isinstance(validator, str):
            raise ValueError(f"validator must be a 'module:function' string or {DISABLED!r}, not {validator!r}")
        if validator not in (None, DISABLED):
            load_validator(validator)
    except (TypeError, ValueError, ValidatorError) as exc:
        raise ActionError(str(exc)) from None


def policy_view(
    store: Store, site_id: str, global_promotion: dict | None = None, global_sampling: dict | None = None
) -> dict[str, Any]:
    """The site's own overrides and the settings in effect (global settings and the response
    type's scoring defaults, overrides on top), as the router applies them."""
    from understudy.inference.checked_sampling import SamplingPolicy
    from understudy.routing.policy import PromotionPolicy
    from understudy.routing.router import site_scoring

    overrides = store.site_policy(site_id)
    row = store.cursor().execute("SELECT schema_name FROM sites WHERE id = ?", [site_id]).fetchone()
    try:
        promotion = asdict(PromotionPolicy.from_dict(global_promotion, overrides.get("promotion")))
        scoring = asdict(site_scoring(row[0] if row else None, overrides))
        sampling = asdict(SamplingPolicy.from_dict(global_sampling, overrides.get("sampling")))
    except (TypeError, ValueError) as exc:  # stored before validation existed: show, don't crash
        return {"overrides": overrides, "effective": None, "problem": str(exc)}
    return {
        "overrides": overrides,
        "effective": {
            "promotion": promotion,
            "scoring": {k: list(v) if isinstance(v, tuple) else v for k, v in scoring.items()},
            "sampling": sampling,
            "validator": overrides.get("validator", "by response type (settings, entry points)"),
            "prompt": overrides.get("prompt", "compact where the site's static part separates, else full"),
        },
    }


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
        return set_policy(
            store,
            site_ref,
            found if (found := request.get("overrides")) is not None else {},
            replace=bool(request.get("replace")),
        )
    raise ActionError(f"unknown action {action!r}")
